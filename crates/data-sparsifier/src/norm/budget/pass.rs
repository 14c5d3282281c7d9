//! The per-tensor work of a global budget, generic over the data type and the norm: the survey's
//! sample of block scores and the tally pass over every block.
//!
//! Block scores come from the DataNorm kernel's own score code ([`scores`](super::super::scores)),
//! so a score here is bit for bit the score `DataNorm` ranks by. A score is widened to `f64`
//! (exact for every data type), divided by its tensor's scale (1 without normalization) and kept as
//! the bit pattern of that non-negative `f64`: a *global key*, which orders like the normalized
//! score across tensors of any data type. NaN scores get [`NAN_KEY`], above every number.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use half::{bf16, f16};
use rayon::prelude::*;

use super::super::scores::{self, Grid, Key, NormKind, ScoreElem};
use super::super::select;

/// The global key of a NaN score: above every number.
pub(crate) const NAN_KEY: u64 = u64::MAX;
/// The global key of `+inf`, the largest numeric key.
pub(crate) const INF_KEY: u64 = 0x7FF0_0000_0000_0000;

/// A block score in `f64` from the kernel's key (the score's bit pattern in the data's precision).
pub(crate) trait ScoreValue: ScoreElem {
    /// The score whose key is `k` (NaN for the NaN key).
    fn score_of(k: Self::Key) -> f64;
}

impl ScoreValue for f32 {
    #[inline(always)]
    fn score_of(k: i32) -> f64 {
        f32::from_bits(k as u32) as f64
    }
}
impl ScoreValue for f64 {
    #[inline(always)]
    fn score_of(k: i64) -> f64 {
        f64::from_bits(k as u64)
    }
}
impl ScoreValue for f16 {
    #[inline(always)]
    fn score_of(k: i16) -> f64 {
        f16::from_bits(k as u16).to_f64()
    }
}
impl ScoreValue for bf16 {
    #[inline(always)]
    fn score_of(k: i16) -> f64 {
        bf16::from_bits(k as u16).to_f64()
    }
}

/// The global key of a score under a tensor's `scale` (a positive, finite number; 1 means no
/// normalization, and `score / 1.0` is `score` exactly). Division is correctly rounded, so the key
/// never decreases as the score grows: within one tensor, the global order is the tensor's own.
#[inline(always)]
pub(crate) fn global_key(score: f64, scale: f64) -> u64 {
    if score.is_nan() {
        NAN_KEY
    } else {
        (score / scale).to_bits()
    }
}

/// Maps a tensor's kernel keys to global keys. Half-precision data has at most 32 768 distinct
/// scores, so their global keys are looked up in a table instead of divided.
pub(crate) struct KeyMap {
    scale: f64,
    table: Vec<u64>,
}

impl KeyMap {
    pub(crate) fn new<T: ScoreValue>(scale: f64) -> KeyMap {
        let table = if <T::Key as Key>::BITS == 16 {
            (0..=i16::MAX as u64)
                .map(|k| global_key(T::score_of(T::Key::from_u64(k)), scale))
                .collect()
        } else {
            Vec::new()
        };
        KeyMap { scale, table }
    }

    #[inline(always)]
    fn map<T: ScoreValue>(&self, k: T::Key) -> u64 {
        if self.table.is_empty() {
            global_key(T::score_of(k), self.scale)
        } else {
            self.table[k.to_u64() as usize]
        }
    }
}

/// The scores of a deterministic sample of blocks (all of them when there are at most 16 384),
/// spread over the tensor, in block order.
pub(crate) fn sample_scores<T: ScoreValue, N: NormKind>(data: &[T], g: &Grid) -> Vec<f64> {
    select::sample_positions(g.num_blocks())
        .par_iter()
        .map(|&i| T::score_of(scores::block_key::<T, N>(data, g, i / g.nbc, i % g.nbc)))
        .collect()
}

/// Buckets of a tally's histogram.
pub(crate) const HIST_BUCKETS: usize = 1 << 16;

/// The histogram of a tally round over its bracket `lo ..= hi`: bucket `(key - lo) >> shift`,
/// at most [`HIST_BUCKETS`] of them, each `2^shift` keys wide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct HistSpec {
    pub lo: u64,
    pub hi: u64,
    pub shift: u32,
}

impl HistSpec {
    /// The histogram over the keys `lo ..= hi`.
    pub(crate) fn over(lo: u64, hi: u64) -> HistSpec {
        let bits = 64 - (hi - lo).leading_zeros();
        HistSpec {
            lo,
            hi,
            shift: bits.saturating_sub(HIST_BUCKETS.trailing_zeros()),
        }
    }
    /// The bucket of `key` (`lo <= key <= hi`).
    #[inline(always)]
    pub(crate) fn bucket(&self, key: u64) -> usize {
        ((key - self.lo) >> self.shift) as usize
    }
    /// The keys of bucket `b`.
    pub(crate) fn bucket_keys(&self, b: u64) -> (u64, u64) {
        let lo = self.lo + (b << self.shift);
        let width = (1u64 << self.shift) - 1;
        (lo, lo.saturating_add(width).min(self.hi))
    }
}

/// What one tensor's tally pass found, relative to the round's bracket `[lo, hi]`.
#[derive(Debug)]
pub(crate) struct RawTally {
    /// Blocks with a key `< lo`.
    pub below: u64,
    /// Blocks with a key `== lo`.
    pub eq_lo: u64,
    /// Blocks with `lo < key < hi`.
    pub inside_count: u64,
    /// Their keys (any order), or `None` if more than the cap were found.
    pub inside: Option<Vec<u64>>,
    /// Blocks with a key `== hi` (when `hi != lo`).
    pub eq_hi: u64,
    /// Blocks with a NaN score.
    pub nan: u64,
    /// The histogram of the keys in `lo ..= hi` ([`HIST_BUCKETS`] counts; empty if none).
    pub hist: Vec<u64>,
}

/// Per-task accumulator of [`tally_pass`].
struct Acc<K> {
    keys: Vec<K>,
    below: u64,
    eq_lo: u64,
    inside_count: u64,
    inside: Vec<u64>,
    eq_hi: u64,
    nan: u64,
    /// Allocated at the first key strictly inside the bracket.
    hist: Vec<u64>,
}

impl<K> Acc<K> {
    fn new() -> Self {
        Acc {
            keys: Vec::new(),
            below: 0,
            eq_lo: 0,
            inside_count: 0,
            inside: Vec::new(),
            eq_hi: 0,
            nan: 0,
            hist: Vec::new(),
        }
    }
    fn add(mut self, o: Self) -> Self {
        self.below += o.below;
        self.eq_lo += o.eq_lo;
        self.inside_count += o.inside_count;
        self.inside.extend_from_slice(&o.inside);
        self.eq_hi += o.eq_hi;
        self.nan += o.nan;
        if self.hist.is_empty() {
            self.hist = o.hist;
        } else if !o.hist.is_empty() {
            self.hist.iter_mut().zip(&o.hist).for_each(|(a, b)| *a += b);
        }
        self
    }
}

/// Blocks scored per step of the tally pass.
const CHUNK: usize = 1 << 14;

/// The tally pass: every block's global key, counted against the bracket `lo ..= hi`
/// (branch-free: which side of the bracket a key falls on is a coin toss near the threshold),
/// the keys strictly inside it kept (at most `cap`) and histogrammed. One parallel read of the
/// data; memory: a key buffer and, where a worker meets inside keys, a histogram per worker.
pub(crate) fn tally_pass<T: ScoreValue, N: NormKind>(
    data: &[T],
    g: &Grid,
    map: &KeyMap,
    (lo, hi): (u64, u64),
    cap: usize,
) -> RawTally {
    let nb = g.num_blocks();
    let hs = HistSpec::over(lo, hi);
    let collected = AtomicUsize::new(0);
    let overflow = AtomicBool::new(false);
    let acc = (0..nb.div_ceil(CHUNK))
        .into_par_iter()
        .with_min_len(4)
        .fold(Acc::new, |mut a, c| {
            let r: Range<usize> = c * CHUNK..((c + 1) * CHUNK).min(nb);
            a.keys.resize(r.len(), T::Key::MIN);
            scores::keys_pass::<T, N>(data, g, &mut a.keys, std::slice::from_ref(&r));
            let start = a.inside.len();
            let (mut below, mut eq_lo, mut eq_hi, mut nan) = (0u64, 0u64, 0u64, 0u64);
            for &k in &a.keys {
                let k = map.map::<T>(k);
                let (ge_lo, gt_lo) = ((k >= lo) as u64, (k > lo) as u64);
                let (lt_hi, le_hi) = ((k < hi) as u64, (k <= hi) as u64);
                below += 1 - ge_lo;
                eq_lo += ge_lo - gt_lo;
                eq_hi += gt_lo & (le_hi - lt_hi);
                nan += (k == NAN_KEY) as u64;
                if gt_lo & lt_hi != 0 {
                    a.inside.push(k);
                }
            }
            let found = a.inside.len() - start;
            if found > 0 {
                if a.hist.is_empty() {
                    a.hist = vec![0; HIST_BUCKETS];
                }
                for &k in &a.inside[start..] {
                    a.hist[hs.bucket(k)] += 1;
                }
                a.inside_count += found as u64;
                if overflow.load(Ordering::Relaxed)
                    || collected.fetch_add(found, Ordering::Relaxed) + found > cap
                {
                    overflow.store(true, Ordering::Relaxed);
                    a.inside.clear();
                }
            }
            a.below += below;
            a.eq_lo += eq_lo;
            a.eq_hi += eq_hi;
            a.nan += nan;
            a
        })
        .reduce(Acc::new, Acc::add);
    let mut hist = acc.hist;
    if acc.eq_lo + acc.eq_hi > 0 {
        hist.resize(HIST_BUCKETS, 0);
        hist[0] += acc.eq_lo;
        hist[hs.bucket(hi)] += acc.eq_hi;
    }
    RawTally {
        below: acc.below,
        eq_lo: acc.eq_lo,
        inside_count: acc.inside_count,
        inside: (!overflow.load(Ordering::Relaxed)).then_some(acc.inside),
        eq_hi: acc.eq_hi,
        nan: acc.nan,
        hist,
    }
}

/// The survey's work on one tensor: [`sample_scores`].
pub(crate) fn survey_one<T: ScoreValue, N: NormKind>(data: &[T], g: &Grid) -> Vec<f64> {
    sample_scores::<T, N>(data, g)
}

/// The tally's work on one tensor: [`tally_pass`] with the tensor's `scale`.
pub(crate) fn tally_one<T: ScoreValue, N: NormKind>(
    data: &[T],
    g: &Grid,
    scale: f64,
    bracket: (u64, u64),
    cap: usize,
) -> RawTally {
    tally_pass::<T, N>(data, g, &KeyMap::new::<T>(scale), bracket, cap)
}

/// Calls the generic function `$f::<T, N>(slice, args...)` for the data type of `$slice` (a
/// [`Slice`](crate::tensor::Slice)) and the [`Norm`](crate::norm::Norm) `$norm`.
macro_rules! with_types {
    ($slice:expr, $norm:expr, $f:ident($($arg:expr),*)) => {{
        use $crate::norm::scores::{L1, L2};
        use $crate::norm::Norm;
        use $crate::tensor::Slice;
        match ($slice, $norm) {
            (Slice::F32(s), Norm::L1) => $f::<f32, L1>(s, $($arg),*),
            (Slice::F32(s), Norm::L2) => $f::<f32, L2>(s, $($arg),*),
            (Slice::F64(s), Norm::L1) => $f::<f64, L1>(s, $($arg),*),
            (Slice::F64(s), Norm::L2) => $f::<f64, L2>(s, $($arg),*),
            (Slice::F16(s), Norm::L1) => $f::<half::f16, L1>(s, $($arg),*),
            (Slice::F16(s), Norm::L2) => $f::<half::f16, L2>(s, $($arg),*),
            (Slice::BF16(s), Norm::L1) => $f::<half::bf16, L1>(s, $($arg),*),
            (Slice::BF16(s), Norm::L2) => $f::<half::bf16, L2>(s, $($arg),*),
        }
    }};
}
pub(crate) use with_types;
