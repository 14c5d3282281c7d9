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
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use half::{bf16, f16};
use rayon::prelude::*;

use crate::dtype::Element;

/// An order-preserving integer image of a non-negative score or cell value: its magnitude bits as
/// a non-negative `i16`, `i32` or `i64` (signed, so vector compares are native), NaN as the
/// type's `MAX` (above infinity).
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
    /// The code loop of the coded pass: writes the [`code`] of each key relative to `[lo, hi]`
    /// into `codes` (`codes.len() >= keys.len()`), keeping the within-block selection of each
    /// old code byte (shifted up by 3, under `sel_mask`), and returns the counts.
    fn code_run(keys: &[Self], lo: Self, hi: Self, sel_mask: u8, codes: &mut [u8]) -> CodeCounts {
        code_run_portable(keys, lo, hi, sel_mask, codes)
    }
}

/// How many keys of a run the code loop found in each code (and how many are NaN).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CodeCounts {
    /// `BELOW`.
    pub lt: usize,
    /// `AT_LO`.
    pub eq_lo: usize,
    /// `INSIDE`.
    pub inside: usize,
    /// `AT_HI`.
    pub eq_hi: usize,
    /// NaN keys (`Key::MAX`).
    pub nan: usize,
}

impl std::ops::Add for CodeCounts {
    type Output = CodeCounts;
    fn add(self, o: CodeCounts) -> CodeCounts {
        CodeCounts {
            lt: self.lt + o.lt,
            eq_lo: self.eq_lo + o.eq_lo,
            inside: self.inside + o.inside,
            eq_hi: self.eq_hi + o.eq_hi,
            nan: self.nan + o.nan,
        }
    }
}

/// [`Key::code_run`] in plain Rust: [`code_of`], with the counts taken from the same comparisons.
#[inline(always)]
pub(crate) fn code_run_portable<K: Key>(
    keys: &[K],
    lo: K,
    hi: K,
    sel_mask: u8,
    codes: &mut [u8],
) -> CodeCounts {
    let (mut lt, mut el, mut eh, mut ins, mut na) = (0u32, 0u32, 0u32, 0u32, 0u32);
    for (&k, c) in keys.iter().zip(codes.iter_mut()) {
        let ge_lo = (k >= lo) as u32;
        let gt_lo = (k > lo) as u32;
        let ge_hi = (k >= hi) as u32 & gt_lo;
        let gt_hi = (k > hi) as u32;
        *c = ((*c << 3) & sel_mask) | (ge_lo + gt_lo + ge_hi + gt_hi) as u8;
        lt += 1 - ge_lo;
        el += ge_lo - gt_lo;
        ins += gt_lo - ge_hi;
        eh += ge_hi - gt_hi;
        na += (k == K::MAX) as u32;
    }
    CodeCounts {
        lt: lt as usize,
        eq_lo: el as usize,
        inside: ins as usize,
        eq_hi: eh as usize,
        nan: na as usize,
    }
}

/// [`Key::code_run`] with an AVX2 loop `simd` for the whole multiples of its width, where the CPU
/// has it, and the portable loop for the rest.
#[inline(always)]
#[allow(unused_variables)] // `simd` is unused off x86_64
fn code_run_with<K: Key>(
    keys: &[K],
    lo: K,
    hi: K,
    sel_mask: u8,
    codes: &mut [u8],
    simd: impl Fn(&[K], K, K, u8, &mut [u8]) -> (usize, CodeCounts),
) -> CodeCounts {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_v3() {
        let (done, head) = simd(keys, lo, hi, sel_mask, codes);
        return head + code_run_portable(&keys[done..], lo, hi, sel_mask, &mut codes[done..]);
    }
    code_run_portable(keys, lo, hi, sel_mask, codes)
}

macro_rules! impl_key {
    ($t:ty, $u:ty, $p:ty $(, $simd:ident)?) => {
        impl Key for $t {
            $(
            #[inline(always)]
            fn code_run(keys: &[$t], lo: $t, hi: $t, sel_mask: u8, codes: &mut [u8]) -> CodeCounts {
                #[cfg(target_arch = "x86_64")]
                #[inline(always)]
                fn simd(k: &[$t], lo: $t, hi: $t, s: u8, c: &mut [u8]) -> (usize, CodeCounts) {
                    // SAFETY: called only where `has_v3` holds (in `code_run_with`): the CPU has
                    // AVX2.
                    unsafe { super::avx2::$simd(k, lo, hi, s, c) }
                }
                #[cfg(not(target_arch = "x86_64"))]
                fn simd(_: &[$t], _: $t, _: $t, _: u8, _: &mut [u8]) -> (usize, CodeCounts) {
                    (0, CodeCounts::default())
                }
                code_run_with(keys, lo, hi, sel_mask, codes, simd)
            }
            )?
            const MAX: Self = <$t>::MAX;
            const MIN: Self = 0;
            const BITS: u32 = <$t>::BITS;
            type Packed = $p;
            #[inline(always)]
            fn pack(self, idx: u32) -> $p {
                ((self as $u as $p) << 32) | idx as $p
            }
            #[inline(always)]
            fn to_u64(self) -> u64 {
                self as $u as u64
            }
            #[inline(always)]
            fn from_u64(v: u64) -> Self {
                v as $t
            }
        }
    };
}
impl_key!(i16, u16, u64, codes_i16);
impl_key!(i32, u32, u64, codes_i32);
impl_key!(i64, u64, u128);

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
    /// The keys of the first blocks of a run of one-row blocks of four cells (`data.len() == 4 ·
    /// keys.len()`) by an AVX2 loop where the type has one and the CPU has AVX2; returns how many
    /// it did (the caller does the rest). The same keys as [`keys_exact`].
    #[inline(always)]
    fn keys4_simd<N: NormKind>(data: &[Self], keys: &mut [Self::Key]) -> usize {
        let _ = (data, keys);
        0
    }
    /// [`keys_nibbles`] for the first blocks of a run of one-row blocks of four cells by an AVX2
    /// loop where the type has one and the CPU has AVX2; returns how many it did.
    #[inline(always)]
    fn keys_nibbles4_simd<N: NormKind>(
        data: &[Self],
        z: usize,
        keys: &mut [Self::Key],
        out: &mut [u8],
    ) -> usize {
        let _ = (data, z, keys, out);
        0
    }
}

/// Which of the types with f32 sums an AVX2 loop reads (a const generic parameter).
pub(crate) mod element {
    /// f32.
    pub const NOT_HALF: u8 = 0;
    /// bf16.
    pub const BF16: u8 = 1;
    /// f16.
    pub const F16: u8 = 2;
}

/// [`ScoreElem::keys_nibbles4_simd`] for the types whose sums are f32 (`HALF`, an [`element`]
/// code).
#[inline(always)]
#[allow(unused_variables)] // off x86_64
fn keys_nibbles4_f32_sums<T: bytemuck::Pod, K: bytemuck::Pod, N: NormKind, const HALF: u8>(
    data: &[T],
    z: usize,
    keys: &mut [K],
    out: &mut [u8],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::has_v3() {
        let (d, k) = (bytemuck::cast_slice(data), bytemuck::cast_slice_mut(keys));
        // SAFETY: the CPU has AVX2 and F16C (`has_v3`, checked just above).
        return unsafe {
            if N::SQUARE {
                super::avx2::keys_nibbles4::<HALF, true>(d, z, k, out)
            } else {
                super::avx2::keys_nibbles4::<HALF, false>(d, z, k, out)
            }
        };
    }
    0
}

impl ScoreElem for f32 {
    type Key = i32;
    #[inline(always)]
    fn l1(self) -> f32 {
        self.abs()
    }
    #[inline(always)]
    fn l2(self) -> f32 {
        self * self
    }
    #[inline(always)]
    fn l1_key(self) -> i32 {
        f32_key(self.abs())
    }
    #[inline(always)]
    fn l2_key(self) -> i32 {
        f32_key(self * self)
    }
    #[inline(always)]
    fn score_key(sum: f32, count: usize) -> i32 {
        f32_key(sum / count as f32)
    }
    #[inline(always)]
    fn keys4_simd<N: NormKind>(data: &[f32], keys: &mut [i32]) -> usize {
        #[cfg(target_arch = "x86_64")]
        if crate::simd::has_v3() {
            // SAFETY: the CPU has AVX2 (`has_v3`, checked just above).
            return unsafe {
                if N::SQUARE {
                    super::avx2::keys4_f32::<true>(data, keys)
                } else {
                    super::avx2::keys4_f32::<false>(data, keys)
                }
            };
        }
        let _ = (data, keys);
        0
    }
    #[inline(always)]
    fn keys_nibbles4_simd<N: NormKind>(
        data: &[f32],
        z: usize,
        keys: &mut [i32],
        out: &mut [u8],
    ) -> usize {
        keys_nibbles4_f32_sums::<f32, i32, N, { element::NOT_HALF }>(data, z, keys, out)
    }
}

impl ScoreElem for f64 {
    type Key = i64;
    #[inline(always)]
    fn l1(self) -> f64 {
        self.abs()
    }
    #[inline(always)]
    fn l2(self) -> f64 {
        self * self
    }
    #[inline(always)]
    fn l1_key(self) -> i64 {
        f64_key(self.abs())
    }
    #[inline(always)]
    fn l2_key(self) -> i64 {
        f64_key(self * self)
    }
    #[inline(always)]
    fn score_key(sum: f64, count: usize) -> i64 {
        f64_key(sum / count as f64)
    }
}

macro_rules! impl_half {
    ($t:ty, $nan_mask:expr, $abs_f32:path, $round:path, $bf16:expr, $half_code:expr) => {
        impl ScoreElem for $t {
            type Key = i16;
            #[inline(always)]
            fn l1(self) -> f32 {
                $abs_f32(self.to_bits())
            }
            #[inline(always)]
            fn l2(self) -> f32 {
                let x = $abs_f32(self.to_bits());
                $abs_f32($round(x * x))
            }
            #[inline(always)]
            fn l1_key(self) -> i16 {
                half_key(self.to_bits() & 0x7fff, $nan_mask)
            }
            #[inline(always)]
            fn l2_key(self) -> i16 {
                let x = $abs_f32(self.to_bits());
                rounded_key(x * x, $round)
            }
            #[inline(always)]
            fn score_key(sum: f32, count: usize) -> i16 {
                rounded_key(sum / count as f32, $round)
            }
            #[inline(always)]
            fn keys4_simd<N: NormKind>(data: &[$t], keys: &mut [i16]) -> usize {
                #[cfg(target_arch = "x86_64")]
                if crate::simd::has_v3() {
                    let bits: &[u16] = bytemuck::cast_slice(data);
                    // SAFETY: the CPU has AVX2 and F16C (`has_v3`, checked just above).
                    return unsafe {
                        if N::SQUARE {
                            super::avx2::keys4_half::<$bf16, true>(bits, keys)
                        } else {
                            super::avx2::keys4_half::<$bf16, false>(bits, keys)
                        }
                    };
                }
                let _ = (data, keys);
                0
            }
            #[inline(always)]
            fn keys_nibbles4_simd<N: NormKind>(
                data: &[$t],
                z: usize,
                keys: &mut [i16],
                out: &mut [u8],
            ) -> usize {
                keys_nibbles4_f32_sums::<$t, i16, N, { $half_code }>(data, z, keys, out)
            }
        }
    };
}
// Exponent bits all set: inf if the mantissa is 0, NaN otherwise.
impl_half!(
    f16,
    0x7c00,
    f16_abs_to_f32,
    f32_to_f16_bits,
    false,
    element::F16
);
impl_half!(
    bf16,
    0x7f80,
    bf16_abs_to_f32,
    f32_to_bf16_bits,
    true,
    element::BF16
);

// Half-precision conversions, exact and branch-free so that the score loops vectorize. `half`'s own
// conversions give the same values, but pick the f16 instruction at run time for every element (or
// fall back to a branchy software path), which keeps those loops scalar. Checked against `half` for
// every 16-bit pattern and a sweep of f32 values (see the tests).

/// `|x|` of the f16 with bits `b`, as f32 (exact; NaN stays NaN).
#[inline(always)]
fn f16_abs_to_f32(b: u16) -> f32 {
    let m = (b & 0x7fff) as u32;
    let x = m << 13;
    // Normal numbers: rebias the exponent (15 -> 127). Infinity and NaN: exponent 31 -> 255.
    // Subnormals: m · 2^-24, exact in f32.
    let normal = f32::from_bits(x + (112 << 23));
    let special = f32::from_bits(x + (224 << 23));
    let sub = m as f32 * (1.0 / 16_777_216.0);
    if m < 0x400 {
        sub
    } else if m >= 0x7c00 {
        special
    } else {
        normal
    }
}

/// `|x|` of the bf16 with bits `b`, as f32 (exact; NaN stays NaN).
#[inline(always)]
fn bf16_abs_to_f32(b: u16) -> f32 {
    f32::from_bits(((b & 0x7fff) as u32) << 16)
}

/// The bits of `v` rounded to f16, to nearest, ties to even (any f32; NaN gives a quiet NaN).
/// F. Giesen's `float_to_half_fast3_rtne`.
#[inline(always)]
fn f32_to_f16_bits(v: f32) -> u16 {
    const F32_INF: u32 = 255 << 23;
    const F16_MAX: u32 = (127 + 16) << 23;
    const DENORM_MAGIC: u32 = ((127 - 15) + (23 - 10) + 1) << 23;
    let bits = v.to_bits();
    let sign = bits & 0x8000_0000;
    let f = bits ^ sign;
    // Below 2^-14 the result is subnormal: adding 0.5 lets the FPU round at the f16 subnormal ulp.
    let den = (f32::from_bits(f) + f32::from_bits(DENORM_MAGIC))
        .to_bits()
        .wrapping_sub(DENORM_MAGIC);
    let mant_odd = (f >> 13) & 1;
    let norm = f
        .wrapping_add(((15u32.wrapping_sub(127)) << 23).wrapping_add(0xfff))
        .wrapping_add(mant_odd)
        >> 13;
    let o = if f >= F16_MAX {
        if f > F32_INF {
            0x7e00
        } else {
            0x7c00
        }
    } else if f < (113 << 23) {
        den
    } else {
        norm
    };
    (o | (sign >> 16)) as u16
}

/// The bits of `v` rounded to bf16, to nearest, ties to even (NaN gives a quiet NaN).
#[inline(always)]
fn f32_to_bf16_bits(v: f32) -> u16 {
    let x = v.to_bits();
    let r = (x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16) as u16;
    if x & 0x7fff_ffff > 0x7f80_0000 {
        ((x >> 16) | 0x40) as u16
    } else {
        r
    }
}

/// The key of `v` (non-negative or NaN) rounded to a half type by `round`: its magnitude bits;
/// NaN → MAX.
#[inline(always)]
fn rounded_key(v: f32, round: fn(f32) -> u16) -> i16 {
    if v.is_nan() {
        i16::MAX
    } else {
        (round(v) & 0x7fff) as i16
    }
}

/// Key of a non-negative f32: its magnitude bits; NaN → MAX.
#[inline(always)]
fn f32_key(v: f32) -> i32 {
    if v.is_nan() {
        i32::MAX
    } else {
        (v.to_bits() & 0x7fff_ffff) as i32
    }
}
#[inline(always)]
fn f64_key(v: f64) -> i64 {
    if v.is_nan() {
        i64::MAX
    } else {
        (v.to_bits() & 0x7fff_ffff_ffff_ffff) as i64
    }
}
/// Key of the magnitude bits of a half-precision value; NaN → MAX.
#[inline(always)]
fn half_key(bits: u16, exp_mask: u16) -> i16 {
    if bits & exp_mask == exp_mask && bits & !exp_mask != 0 {
        i16::MAX
    } else {
        bits as i16
    }
}

/// L1 or L2, as a type, so the inner loops are monomorphized.
pub(crate) trait NormKind: Copy + Send + Sync + 'static {
    /// L2: cells are squared.
    const SQUARE: bool;
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
    const SQUARE: bool = false;
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
    const SQUARE: bool = true;
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

/// Adds `BW` consecutive cells per block into `acc` (`row.len() == acc.len() * BW`). Each block's
/// cells are added in order, so a block's sum is the same sequence of additions as PyTorch's; the
/// loop runs over independent blocks with a fixed `BW`, which the compiler vectorizes across
/// blocks (strided loads and shuffles), one lane per block.
#[inline(always)]
fn accumulate_exact<T: ScoreElem, N: NormKind, const BW: usize>(row: &[T], acc: &mut [T::Acc]) {
    debug_assert_eq!(row.len(), acc.len() * BW);
    for (a, c) in acc.iter_mut().zip(row.chunks_exact(BW)) {
        let mut s = *a;
        for &x in c {
            s = s + N::cell(x);
        }
        *a = s;
    }
}

/// Keys of `keys.len()` whole blocks of `BW` consecutive cells (`data.len() == keys.len() * BW`),
/// one data row per block: sums and keys in one loop, vectorized across blocks.
#[inline(always)]
pub(crate) fn keys_exact<T: ScoreElem, N: NormKind, const BW: usize>(
    data: &[T],
    keys: &mut [T::Key],
) {
    debug_assert_eq!(data.len(), keys.len() * BW);
    for (k, c) in keys.iter_mut().zip(data.chunks_exact(BW)) {
        let mut s = T::acc_zero();
        for &x in c {
            s = s + N::cell(x);
        }
        *k = T::score_key(s, BW);
    }
}

/// [`keys_exact`] with a run-time block width.
#[inline(always)]
fn keys_exact_dyn<T: ScoreElem, N: NormKind>(data: &[T], keys: &mut [T::Key], bw: usize) {
    for (k, c) in keys.iter_mut().zip(data.chunks_exact(bw)) {
        let mut s = T::acc_zero();
        for &x in c {
            s = s + N::cell(x);
        }
        *k = T::score_key(s, bw);
    }
}

/// Adds one data row into the per-block-column sums (the last block may be partial).
#[inline(always)]
fn accumulate_row<T: ScoreElem, N: NormKind>(row: &[T], acc: &mut [T::Acc], bw: usize) {
    let full = row.len() / bw;
    let (head, tail) = row.split_at(full * bw);
    match bw {
        1 => accumulate_exact::<T, N, 1>(head, &mut acc[..full]),
        2 => accumulate_exact::<T, N, 2>(head, &mut acc[..full]),
        4 => accumulate_exact::<T, N, 4>(head, &mut acc[..full]),
        8 => accumulate_exact::<T, N, 8>(head, &mut acc[..full]),
        16 => accumulate_exact::<T, N, 16>(head, &mut acc[..full]),
        _ => {
            for (a, c) in acc[..full].iter_mut().zip(head.chunks_exact(bw)) {
                let mut s = *a;
                for &x in c {
                    s = s + N::cell(x);
                }
                *a = s;
            }
        }
    }
    if !tail.is_empty() {
        let mut s = acc[full];
        for &x in tail {
            s = s + N::cell(x);
        }
        acc[full] = s;
    }
}

/// How far ahead of each data row that the multi-row score loop adds into its block sums the
/// row's cache lines are requested. It made `(4, 4)` f32 steps about 10% faster in paired runs
/// (docs/data-norm.md, "Prefetching"). The same prefetching in the one-row loops measured slower
/// at `(1, 4)`, and the f16 and bf16 loops are bound by their work per block: they do not
/// prefetch.
const AHEAD_BYTES: usize = 4096;
/// Requests the cache lines of the `n` elements [`AHEAD_BYTES`] past element `i` of `data`, one
/// hint per line (none for 2-byte elements, or past the end of `data`).
#[inline(always)]
fn prefetch_ahead<T>(data: &[T], i: usize, n: usize) {
    let size = std::mem::size_of::<T>();
    if size < 4 {
        return;
    }
    let (start, line) = (i + AHEAD_BYTES / size, (64 / size).max(1));
    let mut at = start;
    while at < start + n {
        crate::simd::prefetch(data, at);
        at += line;
    }
}

/// Writes the keys of blocks `b0 .. b0 + out.len()` (row-major block indices) into `out`. The run
/// may start and end anywhere: it is scored in pieces that each lie in one block row.
#[inline(always)]
fn block_range_keys<T: ScoreElem, N: NormKind>(
    data: &[T],
    g: &Grid,
    b0: usize,
    out: &mut [T::Key],
    acc: &mut Vec<T::Acc>,
) {
    if g.bh == 1 && g.w % g.bw == 0 {
        // Every block is `bw` consecutive cells (block `b` is cells `b·bw .. (b+1)·bw`): the run
        // is one run of whole blocks.
        let d = &data[b0 * g.bw..(b0 + out.len()) * g.bw];
        match g.bw {
            1 => keys_exact::<T, N, 1>(d, out),
            2 => keys_exact::<T, N, 2>(d, out),
            4 => {
                let done = T::keys4_simd::<N>(d, out);
                keys_exact::<T, N, 4>(&d[done * 4..], &mut out[done..]);
            }
            8 => keys_exact::<T, N, 8>(d, out),
            16 => keys_exact::<T, N, 16>(d, out),
            bw => keys_exact_dyn::<T, N>(d, out, bw),
        }
        return;
    }
    let mut b = b0;
    let mut rest = out;
    while !rest.is_empty() {
        let (br, bc0) = (b / g.nbc, b % g.nbc);
        let n = rest.len().min(g.nbc - bc0);
        let (piece, tail) = std::mem::take(&mut rest).split_at_mut(n);
        piece_keys::<T, N>(data, g, br, bc0, piece, acc);
        rest = tail;
        b += n;
    }
}

/// Writes the keys of blocks `(br, bc0 ..)` of one block row into `out` (`out.len()` blocks).
#[inline(always)]
fn piece_keys<T: ScoreElem, N: NormKind>(
    data: &[T],
    g: &Grid,
    br: usize,
    bc0: usize,
    out: &mut [T::Key],
    acc: &mut Vec<T::Acc>,
) {
    let (c0, c1) = (bc0 * g.bw, ((bc0 + out.len()) * g.bw).min(g.w));
    acc.clear();
    acc.resize(out.len(), T::acc_zero());
    let rows = g.rows_of(br);
    let nrows = rows.len();
    for r in rows {
        prefetch_ahead(data, r * g.w + c0, c1 - c0);
        accumulate_row::<T, N>(&data[r * g.w + c0..r * g.w + c1], acc, g.bw);
    }
    // Whole blocks first; only the last block of a block row can be partial.
    let full = (c1 - c0) / g.bw;
    let count = nrows * g.bw;
    for (o, &s) in out[..full].iter_mut().zip(&acc[..full]) {
        *o = T::score_key(s, count);
    }
    if full < out.len() {
        out[full] = T::score_key(acc[full], nrows * (c1 - c0 - full * g.bw));
    }
}

/// Splits `v` (one item per block, row-major) into the parts of the tasks whose block ranges are
/// `ranges` (consecutive, starting at 0): `(first block index, part)` per task.
pub(crate) fn split_parts<'a, X>(
    v: &'a mut [X],
    ranges: &[Range<usize>],
) -> Vec<(usize, &'a mut [X])> {
    let mut rest = v;
    let mut parts = Vec::with_capacity(ranges.len());
    for r in ranges {
        let (part, tail) = std::mem::take(&mut rest).split_at_mut(r.len());
        parts.push((r.start, part));
        rest = tail;
    }
    parts
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

/// A key interval `[lo, hi]` expected to hold the k-th smallest key, found from a sample.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bracket<K> {
    pub lo: K,
    pub hi: K,
    /// Most keys to collect strictly inside `(lo, hi)` before giving up on the bracket.
    pub cap: usize,
    /// The expected share of the blocks inside, from the sample: each task reserves its list for
    /// 1.25 times its share, so the lists do not grow by doubling (up to 2× the memory).
    pub share: f64,
}

/// Block codes: where a block's key lies relative to a bracket `[lo, hi]`.
pub(crate) mod code {
    /// `key < lo`.
    #[allow(dead_code)] // the codes are computed arithmetically; named for the reader and tests
    pub const BELOW: u8 = 0;
    /// `key == lo`.
    pub const AT_LO: u8 = 1;
    /// `lo < key < hi` (the key is kept in the task's candidate list).
    pub const INSIDE: u8 = 2;
    /// `key == hi` (and `hi != lo`).
    pub const AT_HI: u8 = 3;
    /// `key > hi`.
    pub const ABOVE: u8 = 4;
}

/// The code of `k` relative to `[lo, hi]` (branch-free).
#[inline(always)]
pub(crate) fn code_of<K: Key>(k: K, lo: K, hi: K) -> u8 {
    // BELOW 0, AT_LO 1, INSIDE 2, AT_HI 3, ABOVE 4; with lo == hi only 0, 1, 4 occur.
    let ge_lo = (k >= lo) as u8;
    let gt_lo = (k > lo) as u8;
    let ge_hi = (k >= hi) as u8 & gt_lo;
    let gt_hi = (k > hi) as u8;
    ge_lo + gt_lo + ge_hi + gt_hi
}

const ONES: u64 = 0x0101_0101_0101_0101;

/// Gathers bit 0 of each byte of `b` (other bits zero) into bits 0..8.
#[inline(always)]
fn gather_bytes(b: u64) -> u64 {
    b.wrapping_mul(0x0102_0408_1020_4080) >> 56
}

/// For up to 64 block code bytes (codes 0..=4 in the low 3 bits): bit `j` of the first result is set iff
/// `codes[j] > c`, of the second iff `codes[j] == c`. Eight codes per step, in a u64.
#[inline(always)]
pub(crate) fn code_bits(codes: &[u8], c: u8) -> (u64, u64) {
    debug_assert!(codes.len() <= 64 && c <= code::ABOVE);
    #[cfg(target_arch = "x86_64")]
    if let (Ok(c64), true) = (<&[u8; 64]>::try_from(codes), crate::simd::has_v3()) {
        // SAFETY: the CPU has AVX2 (`has_v3`, checked just above).
        return unsafe { super::avx2::code_bits64(c64, c) };
    }
    code_bits_portable(codes, c)
}

/// [`code_bits`] in plain Rust.
#[inline(always)]
pub(crate) fn code_bits_portable(codes: &[u8], c: u8) -> (u64, u64) {
    let (mut gt, mut eq) = (0u64, 0u64);
    let mut it = codes.chunks_exact(8);
    let mut shift = 0;
    let one = |v: u64| {
        // Bits 3..8 may hold a within-block selection: only the low 3 bits are the code.
        let v = v & (ONES * 0x07);
        // byte + (0x7f - c) has its high bit set iff byte > c (no carries: bytes <= 4).
        let g = ((v + ONES * (0x7f - c as u64)) >> 7) & ONES;
        // byte ^ c is 0 iff equal; adding 0x7f sets the high bit iff it is not 0.
        let ne = (((v ^ (ONES * c as u64)) + ONES * 0x7f) >> 7) & ONES;
        (gather_bytes(g), gather_bytes(ne ^ ONES))
    };
    for ch in &mut it {
        let (g, e) = one(u64::from_le_bytes(ch.try_into().unwrap_or([0; 8])));
        gt |= g << shift;
        eq |= e << shift;
        shift += 8;
    }
    let rem = it.remainder();
    if !rem.is_empty() {
        let mut buf = [0u8; 8];
        buf[..rem.len()].copy_from_slice(rem);
        let (g, e) = one(u64::from_le_bytes(buf));
        let m = (1u64 << rem.len()) - 1;
        gt |= (g & m) << shift;
        eq |= (e & m) << shift;
    }
    (gt, eq)
}

/// Blocks of at most this many cells (one row, whole blocks) get their within-block selection
/// computed in the score pass and stored in the high bits of their code byte.
pub(crate) const MAX_SEL_CELLS: usize = 5;

/// Whether the coded pass stores within-block selections for this grid and `zpb`.
pub(crate) fn selection_in_codes(g: &Grid, zpb: usize) -> bool {
    g.bh == 1 && g.w % g.bw == 0 && (2..=MAX_SEL_CELLS).contains(&g.bw) && zpb > 0 && zpb < g.bw
}

/// For consecutive whole blocks of `BW` cells (`data.len() == out.len() * BW`): bit `i` of
/// `out[b]` is set iff cell `i` of block `b` is kept when its `z` smallest cells are zeroed (cells
/// compare by key, then by index). Computed for every block, vectorized across blocks, branch-free:
/// the rank of cell `i` is the number of cells before it with a key `<=` its own plus the number
/// after it with a smaller key.
#[inline(always)]
pub(crate) fn keep_nibbles<T: ScoreElem, N: NormKind, const BW: usize>(
    data: &[T],
    z: usize,
    out: &mut [u8],
) {
    debug_assert_eq!(data.len(), out.len() * BW);
    for (o, c) in out.iter_mut().zip(data.chunks_exact(BW)) {
        *o = nibble::<T, N, BW>(c, z as i32);
    }
}

/// One block's kept cells for [`keep_nibbles`] (`c.len() == BW`).
#[inline(always)]
fn nibble<T: ScoreElem, N: NormKind, const BW: usize>(c: &[T], z: i32) -> u8 {
    let k: [T::Key; BW] = std::array::from_fn(|i| N::cell_key(c[i]));
    // 32-bit lanes throughout (no narrowing until the store).
    let mut bits = 0i32;
    for i in 0..BW {
        let mut r = 0i32;
        for j in 0..BW {
            // Cells before `i` rank below it when `<=`, cells after it when `<` (j == i: no).
            r += if j < i { k[j] <= k[i] } else { k[j] < k[i] } as i32;
        }
        bits |= ((r >= z) as i32) << i;
    }
    bits as u8
}

/// [`keys_exact`] and [`keep_nibbles`] in one loop (one read of each block).
#[inline(always)]
pub(crate) fn keys_nibbles<T: ScoreElem, N: NormKind, const BW: usize>(
    data: &[T],
    z: usize,
    keys: &mut [T::Key],
    out: &mut [u8],
) {
    debug_assert!(data.len() == out.len() * BW && keys.len() == out.len());
    let done = if BW == 4 {
        T::keys_nibbles4_simd::<N>(data, z, keys, out)
    } else {
        0
    };
    for ((k, o), c) in keys[done..]
        .iter_mut()
        .zip(out[done..].iter_mut())
        .zip(data[done * BW..].chunks_exact(BW))
    {
        let mut s = T::acc_zero();
        for &x in c {
            s = s + N::cell(x);
        }
        *k = T::score_key(s, BW);
        *o = nibble::<T, N, BW>(c, z as i32);
    }
}

/// [`keep_nibbles`] with a run-time block width (`2..=MAX_SEL_CELLS`).
#[inline(always)]
pub(crate) fn keep_nibbles_dyn<T: ScoreElem, N: NormKind>(
    data: &[T],
    bw: usize,
    z: usize,
    out: &mut [u8],
) {
    match bw {
        2 => keep_nibbles::<T, N, 2>(data, z, out),
        3 => keep_nibbles::<T, N, 3>(data, z, out),
        4 => keep_nibbles::<T, N, 4>(data, z, out),
        _ => keep_nibbles::<T, N, 5>(data, z, out),
    }
}

/// [`keys_nibbles`] with a run-time block width (`2..=MAX_SEL_CELLS`).
#[inline(always)]
fn keys_nibbles_dyn<T: ScoreElem, N: NormKind>(
    data: &[T],
    bw: usize,
    z: usize,
    keys: &mut [T::Key],
    out: &mut [u8],
) {
    match bw {
        2 => keys_nibbles::<T, N, 2>(data, z, keys, out),
        3 => keys_nibbles::<T, N, 3>(data, z, keys, out),
        4 => keys_nibbles::<T, N, 4>(data, z, keys, out),
        _ => keys_nibbles::<T, N, 5>(data, z, keys, out),
    }
}

/// What the coded score pass learned about one task's block rows.
#[derive(Debug, Default)]
pub(crate) struct TaskStats<K> {
    /// Blocks coded `BELOW`.
    pub lt: usize,
    /// Blocks coded `AT_LO`.
    pub eq_lo: usize,
    /// Blocks coded `AT_HI`.
    pub eq_hi: usize,
    /// Blocks with a NaN score.
    pub nan: usize,
    /// Keys of the blocks coded `INSIDE`, in block order.
    pub inside: Vec<K>,
}

/// The score pass of the fast path: computes every block key (into a small per-task buffer that
/// stays in cache) and stores only its one-byte [`code`] relative to the bracket, collecting the
/// few keys strictly inside it. The tasks are the runs of blocks `ranges` (consecutive, in
/// row-major block order), one [`TaskStats`] each. Returns `None` if more than `bracket.cap` keys
/// fell inside (the caller then falls back to exact keys).
///
/// `codes` may hold anything on entry: every byte is overwritten.
///
/// With `sel = Some(z)` (only when [`selection_in_codes`]), each code byte also carries, in bits
/// 3..8, the block's kept cells when its `z` smallest are zeroed: the mask pass then needs no
/// second read of the data.
pub(crate) fn coded_pass<T: ScoreElem, N: NormKind>(
    data: &[T],
    g: &Grid,
    codes: &mut [u8],
    ranges: &[Range<usize>],
    b: Bracket<T::Key>,
    sel: Option<usize>,
) -> Option<Vec<TaskStats<T::Key>>> {
    let collected = AtomicUsize::new(0);
    let overflow = AtomicBool::new(false);
    let stats: Vec<TaskStats<T::Key>> = split_parts(codes, ranges)
        .into_par_iter()
        .map_init(
            || (Vec::new(), Vec::new()),
            |(acc, keys), (b0, out)| {
                crate::simd::dispatch(CodedTask::<T, N> {
                    data,
                    g,
                    b0,
                    out,
                    b,
                    sel,
                    acc,
                    keys,
                    collected: &collected,
                    overflow: &overflow,
                    norm: PhantomData,
                })
            },
        )
        .collect();
    (!overflow.load(Ordering::Relaxed)).then_some(stats)
}

/// One task of [`coded_pass`], compiled for AVX2 where the CPU has it ([`crate::simd::dispatch`]).
struct CodedTask<'a, T: ScoreElem, N> {
    data: &'a [T],
    g: &'a Grid,
    b0: usize,
    out: &'a mut [u8],
    b: Bracket<T::Key>,
    sel: Option<usize>,
    acc: &'a mut Vec<T::Acc>,
    keys: &'a mut Vec<T::Key>,
    collected: &'a AtomicUsize,
    overflow: &'a AtomicBool,
    norm: PhantomData<N>,
}

impl<T: ScoreElem, N: NormKind> crate::simd::Kernel for CodedTask<'_, T, N> {
    type Output = TaskStats<T::Key>;
    #[inline(always)]
    fn run(self) -> TaskStats<T::Key> {
        let CodedTask {
            data,
            g,
            b0,
            out,
            b,
            sel,
            acc,
            keys,
            collected,
            overflow,
            ..
        } = self;
        let mut st = TaskStats::default();
        st.inside
            .reserve(((out.len() as f64 * b.share * 1.25) as usize + 16).min(b.cap));
        // Keep a selection written below, clear anything else.
        let sel_mask: u8 = if sel.is_some() { 0xf8 } else { 0 };
        // Groups of about 4096 blocks (whole block rows when a task is whole block rows),
        // so keys and codes stay in L1.
        let group = if out.len() < g.nbc {
            4096
        } else {
            (4096 / g.nbc).max(1) * g.nbc
        };
        for (gi, cs) in out.chunks_mut(group).enumerate() {
            let gb0 = b0 + gi * group;
            keys.resize(cs.len(), T::Key::MIN);
            if let Some(z) = sel {
                // One row per block row, whole blocks: block `b` is cells `b·bw ..`. Keys and
                // selections from one read of each block.
                let d = &data[gb0 * g.bw..(gb0 + cs.len()) * g.bw];
                keys_nibbles_dyn::<T, N>(d, g.bw, z, keys, cs);
            } else {
                block_range_keys::<T, N>(data, g, gb0, keys, acc);
            }
            let ks = &keys[..];
            let n = T::Key::code_run(ks, b.lo, b.hi, sel_mask, cs);
            st.lt += n.lt;
            st.eq_lo += n.eq_lo;
            st.eq_hi += n.eq_hi;
            st.nan += n.nan;
            let ins = n.inside;
            if ins > 0 && !overflow.load(Ordering::Relaxed) {
                if collected.fetch_add(ins, Ordering::Relaxed) + ins > b.cap {
                    overflow.store(true, Ordering::Relaxed);
                } else {
                    // The inside keys, in block order, found 64 codes at a time.
                    for (k64, c64) in ks.chunks(64).zip(cs.chunks(64)) {
                        let (_, mut bits) = code_bits(c64, code::INSIDE);
                        while bits != 0 {
                            st.inside.push(k64[bits.trailing_zeros() as usize]);
                            bits &= bits - 1;
                        }
                    }
                }
            }
        }
        st
    }
}

/// Whether `data` holds a NaN: a parallel scan in chunks whose loop has no early exit, so it
/// vectorizes (the magnitude key is `MAX` exactly for NaN).
pub(crate) fn has_nan<T: ScoreElem>(data: &[T]) -> bool {
    data.par_chunks(1 << 14).any(|c| {
        c.iter()
            .fold(false, |a, &x| a | (x.l1_key() == T::Key::MAX))
    })
}

/// The exact score pass: every block key into `keys` (row-major block order), in parallel tasks
/// over the runs of blocks `ranges`. Returns whether some score is NaN.
pub(crate) fn keys_pass<T: ScoreElem, N: NormKind>(
    data: &[T],
    g: &Grid,
    keys: &mut [T::Key],
    ranges: &[Range<usize>],
) -> bool {
    split_parts(keys, ranges)
        .into_par_iter()
        .map_init(Vec::new, |acc, (b0, out)| {
            crate::simd::dispatch(KeysTask::<T, N> {
                data,
                g,
                b0,
                out,
                acc,
                norm: PhantomData,
            })
        })
        .reduce(|| false, |a, b| a | b)
}

/// One task of [`keys_pass`] (compiled for AVX2 where the CPU has it): whether a key is NaN.
struct KeysTask<'a, T: ScoreElem, N> {
    data: &'a [T],
    g: &'a Grid,
    b0: usize,
    out: &'a mut [T::Key],
    acc: &'a mut Vec<T::Acc>,
    norm: PhantomData<N>,
}

impl<T: ScoreElem, N: NormKind> crate::simd::Kernel for KeysTask<'_, T, N> {
    type Output = bool;
    #[inline(always)]
    fn run(self) -> bool {
        block_range_keys::<T, N>(self.data, self.g, self.b0, self.out, self.acc);
        self.out.contains(&T::Key::MAX)
    }
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
        assert_eq!(f16::NAN.l1_key(), i16::MAX);
        assert_eq!(bf16::NAN.l2_key(), i16::MAX);
        assert_eq!(f16::INFINITY.l1_key(), 0x7c00);
        assert_eq!(f32::NAN.l2_key(), i32::MAX);
        assert_eq!((-0.0f32).l1_key(), 0);
    }

    #[test]
    fn fast_half_conversions_match_half() {
        for b in 0..=u16::MAX {
            let (h, bh) = (f16::from_bits(b), bf16::from_bits(b));
            let (want, got) = (h.to_f32().abs(), f16_abs_to_f32(b));
            assert!(
                want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()),
                "{b:#x}"
            );
            let (want, got) = (bh.to_f32().abs(), bf16_abs_to_f32(b));
            assert!(
                want.to_bits() == got.to_bits() || (want.is_nan() && got.is_nan()),
                "{b:#x}"
            );
            // Every f16/bf16 value and the midpoints next to it round as in `half`.
            for v in [h.to_f32(), bh.to_f32()] {
                for d in [-1i32, 0, 1] {
                    let x = f32::from_bits(v.to_bits().wrapping_add(d as u32));
                    check_round(x);
                    let mid = (x as f64 + f16::from_bits(b.wrapping_add(1)).to_f32() as f64) / 2.0;
                    check_round(mid as f32);
                }
            }
        }
        // A sweep over all of f32.
        let mut x = 0u32;
        while let Some(next) = x.checked_add(9973) {
            check_round(f32::from_bits(x));
            x = next;
        }
        for v in [
            65504.0f32,
            65519.99,
            65520.0,
            65536.0,
            f32::INFINITY,
            f32::MAX,
            5.960_464_5e-8,
            2.980_232_2e-8,
            2.980_232_4e-8,
            1e-10,
        ] {
            check_round(v);
            check_round(-v);
        }
    }

    fn check_round(x: f32) {
        let (want, got) = (f16::from_f32(x).to_bits(), f32_to_f16_bits(x));
        if x.is_nan() {
            assert!(f16::from_bits(got).is_nan(), "{x:e}");
        } else {
            assert_eq!(want, got, "f16 of {x:e} ({:#x})", x.to_bits());
        }
        let (want, got) = (bf16::from_f32(x).to_bits(), f32_to_bf16_bits(x));
        if x.is_nan() {
            assert!(bf16::from_bits(got).is_nan(), "{x:e}");
        } else {
            assert_eq!(want, got, "bf16 of {x:e} ({:#x})", x.to_bits());
        }
    }

    #[test]
    fn has_nan_finds_nan_only() {
        fn check<T: ScoreElem>(from: impl Fn(f32) -> T) {
            let n = 40_000; // more than two scan chunks
            let mut v: Vec<T> = (0..n)
                .map(|i| from([0.0, -0.0, f32::INFINITY, f32::NEG_INFINITY, 1.5][i % 5]))
                .collect();
            assert!(!has_nan(&v));
            for i in [0, 16_383, 16_384, n - 1] {
                let keep = v[i];
                v[i] = from(f32::NAN);
                assert!(has_nan(&v), "{i}");
                v[i] = keep;
            }
        }
        check::<f32>(|x| x);
        check::<f64>(|x| x as f64);
        check::<f16>(f16::from_f32);
        check::<bf16>(bf16::from_f32);
    }

    #[test]
    fn code_bits_match_naive() {
        for len in 0..=64usize {
            let codes: Vec<u8> = (0..len).map(|i| ((i * 7 + len) % 5) as u8).collect();
            for c in 0..=4u8 {
                let (gt, eq) = code_bits(&codes, c);
                for (j, &x) in codes.iter().enumerate() {
                    assert_eq!((gt >> j) & 1 == 1, x > c);
                    assert_eq!((eq >> j) & 1 == 1, x == c);
                }
                assert_eq!(gt >> len.min(63) >> (len / 64), 0);
                assert_eq!(eq >> len.min(63) >> (len / 64), 0);
            }
        }
    }

    #[test]
    fn codes_order_like_keys() {
        for (lo, hi) in [(3i32, 3i32), (3, 7)] {
            for k in 0..10i32 {
                let c = code_of(k, lo, hi);
                let want = if k < lo {
                    0
                } else if k == lo {
                    1
                } else if k < hi {
                    2
                } else if k == hi {
                    3
                } else {
                    4
                };
                assert_eq!(c, want, "{k} in [{lo}, {hi}]");
            }
        }
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
            let mut keys = vec![0i32; g.num_blocks()];
            // Runs that start and end anywhere, also inside a block row.
            let nb = g.num_blocks();
            let mut cuts = vec![0, 1.min(nb), 5.min(nb), nb / 2, nb];
            cuts.sort_unstable();
            cuts.dedup();
            let ranges: Vec<_> = cuts.windows(2).map(|c| c[0]..c[1]).collect();
            keys_pass::<f32, L2>(&data, &g, &mut keys, &ranges);
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
