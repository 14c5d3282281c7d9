//! Block scores: the per-dtype arithmetic that reproduces PyTorch's `avg_pool2d` bit for bit, and
//! the fused, parallel score pass.
//!
//! PyTorch scores a block as `avg_pool2d(|x| or x*x)` with `ceil_mode=True`. Its CPU kernel sums a
//! window row by row, cell by cell, starting from 0 in the accumulator type (`f32` for `f32`, `f16`
//! and `bf16`; `f64` for `f64`), then divides by the number of cells that exist and, for `f16` and
//! `bf16`, rounds the mean back to the data type. For L2 on `f16`/`bf16`, `x*x` is first rounded to
//! the data type. The same order of operations is used here, so near-equal scores order exactly as
//! in PyTorch.
//!
//! A score is kept as its *key*: the bit pattern of the (non-negative) score in the data's
//! precision, which orders like the score; NaN maps to the largest key, so it ranks last.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use half::{bf16, f16};
use rayon::prelude::*;

use crate::dtype::Element;

/// An order-preserving integer image of a non-negative score or cell value (`u16`, `u32`, `u64`).
pub(crate) trait Key: Copy + Ord + Eq + Send + Sync + Default + Debug + 'static {
    /// The largest key: NaN.
    const MAX: Self;
    /// The smallest key.
    const MIN: Self;
    /// Width in bits.
    const BITS: u32;
    /// A key and an index packed so that comparing the packed values compares keys, then indices.
    type Packed: Copy + Ord + Send + Sync + Default + Debug;
    /// Packs with an index (ties → lower index first).
    fn pack(self, idx: u32) -> Self::Packed;
    /// Widens to u64 (for radix selection).
    fn to_u64(self) -> u64;
    /// Narrows from u64.
    fn from_u64(v: u64) -> Self;
}

macro_rules! impl_key {
    ($t:ty, $p:ty) => {
        impl Key for $t {
            const MAX: Self = <$t>::MAX;
            const MIN: Self = 0;
            const BITS: u32 = <$t>::BITS;
            type Packed = $p;
            #[inline(always)]
            fn pack(self, idx: u32) -> $p {
                ((self as $p) << 32) | idx as $p
            }
            #[inline(always)]
            fn to_u64(self) -> u64 {
                self as u64
            }
            #[inline(always)]
            fn from_u64(v: u64) -> Self {
                v as $t
            }
        }
    };
}
impl_key!(u16, u64);
impl_key!(u32, u64);
impl_key!(u64, u128);

/// The per-dtype arithmetic of PyTorch's block and cell scores.
pub(crate) trait ScoreElem: Element {
    /// Key type: the width of the data type.
    type Key: Key;
    /// `|x|` widened to the accumulator (exact).
    fn l1(self) -> Self::Acc;
    /// `x*x` computed in the data type (rounded to it), widened to the accumulator.
    fn l2(self) -> Self::Acc;
    /// Key of `|x|`.
    fn l1_key(self) -> Self::Key;
    /// Key of `x*x` rounded to the data type.
    fn l2_key(self) -> Self::Key;
    /// Key of a block score: `sum / count` in the accumulator, rounded to the data type.
    fn score_key(sum: Self::Acc, count: usize) -> Self::Key;
}

impl ScoreElem for f32 {
    type Key = u32;
    #[inline(always)]
    fn l1(self) -> f32 {
        self.abs()
    }
    #[inline(always)]
    fn l2(self) -> f32 {
        self * self
    }
    #[inline(always)]
    fn l1_key(self) -> u32 {
        f32_key(self.abs())
    }
    #[inline(always)]
    fn l2_key(self) -> u32 {
        f32_key(self * self)
    }
    #[inline(always)]
    fn score_key(sum: f32, count: usize) -> u32 {
        f32_key(sum / count as f32)
    }
}

impl ScoreElem for f64 {
    type Key = u64;
    #[inline(always)]
    fn l1(self) -> f64 {
        self.abs()
    }
    #[inline(always)]
    fn l2(self) -> f64 {
        self * self
    }
    #[inline(always)]
    fn l1_key(self) -> u64 {
        f64_key(self.abs())
    }
    #[inline(always)]
    fn l2_key(self) -> u64 {
        f64_key(self * self)
    }
    #[inline(always)]
    fn score_key(sum: f64, count: usize) -> u64 {
        f64_key(sum / count as f64)
    }
}

macro_rules! impl_half {
    ($t:ty, $nan_mask:expr) => {
        impl ScoreElem for $t {
            type Key = u16;
            #[inline(always)]
            fn l1(self) -> f32 {
                self.to_f32().abs()
            }
            #[inline(always)]
            fn l2(self) -> f32 {
                let x = self.to_f32();
                <$t>::from_f32(x * x).to_f32()
            }
            #[inline(always)]
            fn l1_key(self) -> u16 {
                half_key(self.to_bits() & 0x7fff, $nan_mask)
            }
            #[inline(always)]
            fn l2_key(self) -> u16 {
                let x = self.to_f32();
                half_key(<$t>::from_f32(x * x).to_bits() & 0x7fff, $nan_mask)
            }
            #[inline(always)]
            fn score_key(sum: f32, count: usize) -> u16 {
                half_key(
                    <$t>::from_f32(sum / count as f32).to_bits() & 0x7fff,
                    $nan_mask,
                )
            }
        }
    };
}
// Exponent bits all set: inf if the mantissa is 0, NaN otherwise.
impl_half!(f16, 0x7c00);
impl_half!(bf16, 0x7f80);

/// Key of a non-negative f32 (or NaN → MAX).
#[inline(always)]
fn f32_key(v: f32) -> u32 {
    if v.is_nan() {
        u32::MAX
    } else {
        v.to_bits() & 0x7fff_ffff
    }
}
#[inline(always)]
fn f64_key(v: f64) -> u64 {
    if v.is_nan() {
        u64::MAX
    } else {
        v.to_bits() & 0x7fff_ffff_ffff_ffff
    }
}
/// Key of the magnitude bits of a half-precision value; NaN → MAX.
#[inline(always)]
fn half_key(bits: u16, exp_mask: u16) -> u16 {
    if bits & exp_mask == exp_mask && bits & !exp_mask != 0 {
        u16::MAX
    } else {
        bits
    }
}

/// L1 or L2, as a type, so the inner loops are monomorphized.
pub(crate) trait NormKind: Copy + Send + Sync + 'static {
    /// The cell's contribution to a block sum.
    fn cell<T: ScoreElem>(x: T) -> T::Acc;
    /// The cell's key for within-block selection.
    fn cell_key<T: ScoreElem>(x: T) -> T::Key;
}
/// Mean absolute value.
#[derive(Clone, Copy)]
pub(crate) struct L1;
/// Mean square.
#[derive(Clone, Copy)]
pub(crate) struct L2;
impl NormKind for L1 {
    #[inline(always)]
    fn cell<T: ScoreElem>(x: T) -> T::Acc {
        x.l1()
    }
    #[inline(always)]
    fn cell_key<T: ScoreElem>(x: T) -> T::Key {
        x.l1_key()
    }
}
impl NormKind for L2 {
    #[inline(always)]
    fn cell<T: ScoreElem>(x: T) -> T::Acc {
        x.l2()
    }
    #[inline(always)]
    fn cell_key<T: ScoreElem>(x: T) -> T::Key {
        x.l2_key()
    }
}

/// The block grid over a 2-D `h × w` matrix.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grid {
    pub h: usize,
    pub w: usize,
    pub bh: usize,
    pub bw: usize,
    /// Block rows, `ceil(h / bh)`.
    pub nbr: usize,
    /// Block columns, `ceil(w / bw)`.
    pub nbc: usize,
}

impl Grid {
    pub fn new(h: usize, w: usize, bh: usize, bw: usize) -> Self {
        Grid {
            h,
            w,
            bh,
            bw,
            nbr: h.div_ceil(bh),
            nbc: w.div_ceil(bw),
        }
    }
    /// Number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.nbr * self.nbc
    }
    /// Data rows of block row `br`.
    #[inline]
    pub fn rows_of(&self, br: usize) -> std::ops::Range<usize> {
        let r0 = br * self.bh;
        r0..(r0 + self.bh).min(self.h)
    }
    /// Data columns of block column `bc`.
    #[inline]
    pub fn cols_of(&self, bc: usize) -> std::ops::Range<usize> {
        let c0 = bc * self.bw;
        c0..(c0 + self.bw).min(self.w)
    }
}

/// Adds the cells of one data row into the per-block-column sums, `BW` cells per block (the last
/// block may be partial). Each block's cells are added in order, so the sum of a block is the same
/// sequence of additions as PyTorch's.
#[inline(always)]
fn accumulate_row<T: ScoreElem, N: NormKind, const BW: usize>(row: &[T], acc: &mut [T::Acc]) {
    let full = row.len() / BW;
    for (a, c) in acc[..full].iter_mut().zip(row.chunks_exact(BW)) {
        let mut s = *a;
        for &x in c {
            s = s + N::cell(x);
        }
        *a = s;
    }
    if full < acc.len() {
        let mut s = acc[full];
        for &x in &row[full * BW..] {
            s = s + N::cell(x);
        }
        acc[full] = s;
    }
}

/// [`accumulate_row`] with a run-time block width.
#[inline(always)]
fn accumulate_row_dyn<T: ScoreElem, N: NormKind>(row: &[T], acc: &mut [T::Acc], bw: usize) {
    for (a, c) in acc.iter_mut().zip(row.chunks(bw)) {
        let mut s = *a;
        for &x in c {
            s = s + N::cell(x);
        }
        *a = s;
    }
}

/// Writes the keys of block row `br` into `out` (`nbc` keys), using `acc` as scratch.
#[inline(always)]
fn block_row_keys<T: ScoreElem, N: NormKind>(
    data: &[T],
    g: &Grid,
    br: usize,
    acc: &mut [T::Acc],
    out: &mut [T::Key],
) {
    acc.fill(T::acc_zero());
    let rows = g.rows_of(br);
    let nrows = rows.len();
    for r in rows {
        let row = &data[r * g.w..(r + 1) * g.w];
        match g.bw {
            1 => accumulate_row::<T, N, 1>(row, acc),
            2 => accumulate_row::<T, N, 2>(row, acc),
            4 => accumulate_row::<T, N, 4>(row, acc),
            8 => accumulate_row::<T, N, 8>(row, acc),
            16 => accumulate_row::<T, N, 16>(row, acc),
            bw => accumulate_row_dyn::<T, N>(row, acc, bw),
        }
    }
    let full = g.w / g.bw;
    let count = nrows * g.bw;
    for (o, &s) in out[..full].iter_mut().zip(&acc[..full]) {
        *o = T::score_key(s, count);
    }
    if full < g.nbc {
        out[full] = T::score_key(acc[full], nrows * (g.w - full * g.bw));
    }
}

/// The key of one block, computed on its own (same additions in the same order as the pass).
pub(crate) fn block_key<T: ScoreElem, N: NormKind>(
    data: &[T],
    g: &Grid,
    br: usize,
    bc: usize,
) -> T::Key {
    let mut s = T::acc_zero();
    let (rows, cols) = (g.rows_of(br), g.cols_of(bc));
    let count = rows.len() * cols.len();
    for r in rows {
        for &x in &data[r * g.w + cols.start..r * g.w + cols.end] {
            s = s + N::cell(x);
        }
    }
    T::score_key(s, count)
}

/// A key interval `[lo, hi]` expected to hold the k-th smallest key, found from a sample; the score
/// pass counts the keys below and at its ends and collects those strictly inside.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bracket<K> {
    pub lo: K,
    pub hi: K,
    /// Most keys to collect strictly inside before giving up on the bracket.
    pub cap: usize,
}

/// What the score pass learned about the keys.
#[derive(Debug, Default)]
pub(crate) struct PassStats<K> {
    /// Whether some block score is NaN.
    pub has_nan: bool,
    /// Keys `< lo`.
    pub lt_lo: usize,
    /// Keys `== lo`.
    pub eq_lo: usize,
    /// Keys `== hi` (0 when `hi == lo`).
    pub eq_hi: usize,
    /// Keys strictly inside `(lo, hi)`, unless `overflow`.
    pub inside: Vec<K>,
    /// More than `cap` keys were inside: `inside` is incomplete.
    pub overflow: bool,
}

/// Computes every block key into `keys` (row-major block order) in one parallel pass over the
/// data, `brs_per_task` block rows per task, and gathers the bracket statistics on the way.
pub(crate) fn score_pass<T: ScoreElem, N: NormKind>(
    data: &[T],
    g: &Grid,
    keys: &mut [T::Key],
    brs_per_task: usize,
    bracket: Option<Bracket<T::Key>>,
) -> PassStats<T::Key> {
    let nbc = g.nbc;
    let collected = AtomicUsize::new(0);
    let overflow = AtomicBool::new(false);
    let has_nan = AtomicBool::new(false);
    let brs_per_task = brs_per_task.max(1);
    let partials: Vec<(usize, usize, usize, Vec<T::Key>)> = keys
        .par_chunks_mut(brs_per_task * nbc)
        .enumerate()
        .map(|(task, out)| {
            let mut acc = vec![T::acc_zero(); nbc];
            let br0 = task * brs_per_task;
            let (mut lt, mut eq_lo, mut eq_hi) = (0usize, 0usize, 0usize);
            let mut inside = Vec::new();
            let mut nan = false;
            for (i, row_keys) in out.chunks_mut(nbc).enumerate() {
                block_row_keys::<T, N>(data, g, br0 + i, &mut acc, row_keys);
                nan |= row_keys.iter().fold(false, |a, &k| a | (k == T::Key::MAX));
                if let Some(b) = &bracket {
                    for &k in row_keys.iter() {
                        lt += (k < b.lo) as usize;
                        eq_lo += (k == b.lo) as usize;
                        eq_hi += (k == b.hi) as usize;
                    }
                    if !overflow.load(Ordering::Relaxed) {
                        let before = inside.len();
                        inside.extend(row_keys.iter().filter(|&&k| k > b.lo && k < b.hi));
                        let added = inside.len() - before;
                        if added > 0
                            && collected.fetch_add(added, Ordering::Relaxed) + added > b.cap
                        {
                            overflow.store(true, Ordering::Relaxed);
                            inside = Vec::new();
                        }
                    }
                }
            }
            if nan {
                has_nan.store(true, Ordering::Relaxed);
            }
            (lt, eq_lo, eq_hi, inside)
        })
        .collect();
    let mut stats = PassStats {
        has_nan: has_nan.load(Ordering::Relaxed),
        ..Default::default()
    };
    let overflow = overflow.load(Ordering::Relaxed);
    stats.overflow = overflow;
    let same = bracket.map(|b| b.lo == b.hi).unwrap_or(true);
    for (lt, eq_lo, eq_hi, inside) in partials {
        stats.lt_lo += lt;
        stats.eq_lo += eq_lo;
        if !same {
            stats.eq_hi += eq_hi;
        }
        if !overflow {
            stats.inside.extend(inside);
        }
    }
    if overflow {
        stats.inside = Vec::new();
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_keys_order_like_values() {
        let vals = [0.0f32, 1e-7, 0.001, 0.5, 1.0, 2.0, 65504.0, f32::INFINITY];
        for w in vals.windows(2) {
            assert!(f16::from_f32(w[0]).l1_key() < f16::from_f32(w[1]).l1_key());
            assert!(bf16::from_f32(w[0]).l1_key() < bf16::from_f32(w[1]).l1_key());
            assert!(f32_key(w[0]) < f32_key(w[1]));
            assert!(f64_key(w[0] as f64) < f64_key(w[1] as f64));
        }
        assert_eq!(f16::NAN.l1_key(), u16::MAX);
        assert_eq!(bf16::NAN.l2_key(), u16::MAX);
        assert_eq!(f16::INFINITY.l1_key(), 0x7c00);
        assert_eq!(f32::NAN.l2_key(), u32::MAX);
        assert_eq!((-0.0f32).l1_key(), 0);
    }

    #[test]
    fn pass_matches_single_block_keys() {
        let (h, w) = (7, 13);
        let data: Vec<f32> = (0..h * w)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0)
            .collect();
        for (bh, bw) in [
            (1, 1),
            (1, 4),
            (2, 3),
            (3, 5),
            (4, 4),
            (8, 16),
            (1, 16),
            (2, 2),
        ] {
            let g = Grid::new(h, w, bh, bw);
            let mut keys = vec![0u32; g.num_blocks()];
            score_pass::<f32, L2>(&data, &g, &mut keys, 1, None);
            for br in 0..g.nbr {
                for bc in 0..g.nbc {
                    assert_eq!(
                        keys[br * g.nbc + bc],
                        block_key::<f32, L2>(&data, &g, br, bc)
                    );
                }
            }
        }
    }
}
