//! AVX2 versions of the DataNorm kernel's hottest loops, for the loops the compiler does not
//! vectorize well on its own: the block codes and their counts, the bit masks of code bytes, and
//! the sums of one-row blocks of four cells (which need a 4 × 8 transpose in registers).
//!
//! Each function is the same arithmetic as its portable loop in [`scores`](super::scores), in
//! the same order, so the answers are bit for bit the same; the tests check each against its
//! portable loop on data with ties, NaN, infinities and subnormals. They are called only when
//! [`crate::simd::has_v3`] holds, and handle the whole multiples of their width; the caller runs
//! the portable loop on the rest.
//!
//! Loads and stores go through `bytemuck` (unaligned reads and copies of `__m256i`), so the only
//! `unsafe` is at the call sites: calling a `target_feature` function from code compiled without
//! the feature.

use std::arch::x86_64::*;

use bytemuck::{bytes_of, cast, pod_read_unaligned};

use super::scores::element::{BF16, NOT_HALF};
use super::scores::CodeCounts;

/// 32 bytes from the start of `b` (`b.len() >= 32`).
#[inline(always)]
fn load(b: &[u8]) -> __m256i {
    pod_read_unaligned(&b[..32])
}

/// Stores `v` into the first 32 bytes of `out`.
#[inline(always)]
fn store(out: &mut [u8], v: __m256i) {
    out[..32].copy_from_slice(bytes_of(&v));
}

/// `scores::code_bits` for exactly 64 code bytes: bit `j` of the first result is set iff the code
/// in the low 3 bits of `codes[j]` is above `c`, of the second iff it equals `c`.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn code_bits64(codes: &[u8; 64], c: u8) -> (u64, u64) {
    let (seven, vc) = (_mm256_set1_epi8(7), _mm256_set1_epi8(c as i8));
    let (mut gt, mut eq) = (0u64, 0u64);
    for h in 0..2 {
        // Codes are 0..=4 after the mask: the signed byte compare is the unsigned one.
        let v = _mm256_and_si256(load(&codes[h * 32..]), seven);
        let g = _mm256_movemask_epi8(_mm256_cmpgt_epi8(v, vc)) as u32 as u64;
        let e = _mm256_movemask_epi8(_mm256_cmpeq_epi8(v, vc)) as u32 as u64;
        gt |= g << (32 * h);
        eq |= e << (32 * h);
    }
    (gt, eq)
}

/// The code bytes of 32 blocks, from their codes as four vectors of eight `i32` lanes (blocks in
/// order), merged with the within-block selections of `old` (the previous code bytes, shifted up
/// by 3 and kept under `sel_mask`).
#[target_feature(enable = "avx2")]
#[inline]
fn pack_codes(c: [__m256i; 4], old: __m256i, sel_mask: u8) -> __m256i {
    // Bytes [c0 0..4, c1 0..4, c2 0..4, c3 0..4 | c0 4..8, c1 4..8, ...]; the dword permute puts
    // the blocks back in order.
    let p01 = _mm256_packs_epi32(c[0], c[1]);
    let p23 = _mm256_packs_epi32(c[2], c[3]);
    let bytes = _mm256_packus_epi16(p01, p23);
    let v = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    merge_selection(v, old, sel_mask)
}

/// `(old << 3) & sel_mask | codes`, per byte (a 16-bit shift: the bits it moves across bytes land
/// in the low 3 bits, which `sel_mask` clears).
#[target_feature(enable = "avx2")]
#[inline]
fn merge_selection(codes: __m256i, old: __m256i, sel_mask: u8) -> __m256i {
    let sel = _mm256_and_si256(_mm256_slli_epi16(old, 3), _mm256_set1_epi8(sel_mask as i8));
    _mm256_or_si256(sel, codes)
}

/// The codes (`code_of`) of one vector of keys against the bracket, in the lanes' width; adds
/// one to the lanes of `$acc` (the five counts) where each count's compare holds.
macro_rules! code_vector {
    ($k:expr, $lo:expr, $hi:expr, $max:expr, $acc:expr, $gt:ident, $eq:ident, $sub:ident, $set1:ident) => {{
        let k = $k;
        let lt_lo = $gt($lo, k);
        let gt_lo = $gt(k, $lo);
        let lt_hi = $gt($hi, k);
        let gt_hi = $gt(k, $hi);
        // ge_hi = (k >= hi) & (k > lo). The masks are -1 where true, so
        // code = ge_lo + gt_lo + ge_hi + gt_hi = ge_lo - gt_lo_mask - ge_hi_mask - gt_hi_mask.
        let ge_hi = _mm256_andnot_si256(lt_hi, gt_lo);
        let ge_lo = _mm256_andnot_si256(lt_lo, $set1(1));
        let code = $sub($sub($sub(ge_lo, gt_lo), ge_hi), gt_hi);
        let masks = [
            lt_lo,
            $eq(k, $lo),
            _mm256_and_si256(gt_lo, lt_hi),
            _mm256_andnot_si256(gt_hi, ge_hi),
            $eq(k, $max),
        ];
        // The masks are -1 where the count holds.
        for (a, m) in $acc.iter_mut().zip(masks) {
            *a = $sub(*a, m);
        }
        code
    }};
}

/// The code loop of the coded pass for `i32` keys, 32 keys at a time: writes the code
/// of each key relative to `[lo, hi]` into `codes` (merged with a selection, as in the pass) and
/// returns how many keys it did (a multiple of 32) and their counts.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn codes_i32(
    keys: &[i32],
    lo: i32,
    hi: i32,
    sel_mask: u8,
    codes: &mut [u8],
) -> (usize, CodeCounts) {
    let n = keys.len().min(codes.len()) / 32 * 32;
    let (vlo, vhi, vmax) = (
        _mm256_set1_epi32(lo),
        _mm256_set1_epi32(hi),
        _mm256_set1_epi32(i32::MAX),
    );
    let mut acc = [_mm256_setzero_si256(); 5];
    let key_bytes: &[u8] = bytemuck::cast_slice(&keys[..n]);
    for (kb, cs) in key_bytes.chunks_exact(128).zip(codes.chunks_exact_mut(32)) {
        // A loop, not `array::from_fn`: its closure would not be inlined.
        let mut c = [_mm256_setzero_si256(); 4];
        for (j, cj) in c.iter_mut().enumerate() {
            let k = load(&kb[j * 32..]);
            *cj = code_vector!(
                k,
                vlo,
                vhi,
                vmax,
                acc,
                _mm256_cmpgt_epi32,
                _mm256_cmpeq_epi32,
                _mm256_sub_epi32,
                _mm256_set1_epi32
            );
        }
        store(cs, pack_codes(c, load(cs), sel_mask));
    }
    let sum = |v: __m256i| {
        cast::<__m256i, [i32; 8]>(v)
            .iter()
            .map(|&x| x as usize)
            .sum()
    };
    (n, counts_of(acc.map(sum)))
}

/// [`codes_i32`] for `i16` keys (the half-precision types).
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn codes_i16(
    keys: &[i16],
    lo: i16,
    hi: i16,
    sel_mask: u8,
    codes: &mut [u8],
) -> (usize, CodeCounts) {
    let n = keys.len().min(codes.len()) / 32 * 32;
    let (vlo, vhi, vmax) = (
        _mm256_set1_epi16(lo),
        _mm256_set1_epi16(hi),
        _mm256_set1_epi16(i16::MAX),
    );
    let mut total = [0usize; 5];
    let key_bytes: &[u8] = bytemuck::cast_slice(&keys[..n]);
    // The 16-bit lane counts grow by at most 2 per 32 keys: fold them into `total` well before
    // they could overflow.
    for (kc, cc) in key_bytes
        .chunks(64 * 8192)
        .zip(codes[..n].chunks_mut(32 * 8192))
    {
        let mut acc = [_mm256_setzero_si256(); 5];
        for (kb, cs) in kc.chunks_exact(64).zip(cc.chunks_exact_mut(32)) {
            let mut c = [_mm256_setzero_si256(); 2];
            for (j, cj) in c.iter_mut().enumerate() {
                let k = load(&kb[j * 32..]);
                *cj = code_vector!(
                    k,
                    vlo,
                    vhi,
                    vmax,
                    acc,
                    _mm256_cmpgt_epi16,
                    _mm256_cmpeq_epi16,
                    _mm256_sub_epi16,
                    _mm256_set1_epi16
                );
            }
            // Bytes [c0 0..8, c1 0..8 | c0 8..16, c1 8..16]: the qword permute restores the order.
            let bytes = _mm256_packus_epi16(c[0], c[1]);
            let v = _mm256_permute4x64_epi64::<0b11_01_10_00>(bytes);
            store(cs, merge_selection(v, load(cs), sel_mask));
        }
        for (t, a) in total.iter_mut().zip(acc) {
            *t += cast::<__m256i, [i16; 16]>(a)
                .iter()
                .map(|&x| x as u16 as usize)
                .sum::<usize>();
        }
    }
    (n, counts_of(total))
}

/// The counts in the order the code loops keep them: below lo, at lo, inside, at hi, NaN.
fn counts_of(c: [usize; 5]) -> CodeCounts {
    CodeCounts {
        lt: c[0],
        eq_lo: c[1],
        inside: c[2],
        eq_hi: c[3],
        nan: c[4],
    }
}

/// Adds the four cells of eight blocks of four to the sums `init`, each block's cells in order,
/// `(((init + c0) + c1) + c2) + c3`, as PyTorch adds them (`v[j]` holds the cells of blocks `2j`
/// and `2j + 1` of one data row). Lane `i` of `init` and of the result holds block
/// `[0, 2, 4, 6, 1, 3, 5, 7][i]` ([`in_block_order`] puts them in order). With
/// `init` zero, the first addition is exact: cells are `+0` or more, or NaN.
#[target_feature(enable = "avx2")]
#[inline]
fn sums4(init: __m256, v: [__m256; 4]) -> __m256 {
    let [c0, c1, c2, c3] = transpose4(v);
    let s = _mm256_add_ps(_mm256_add_ps(init, c0), c1);
    _mm256_add_ps(_mm256_add_ps(s, c2), c3)
}

/// The cells of eight blocks of four (`v[j]` holds blocks `2j` and `2j + 1`) as four vectors:
/// vector `i` holds cell `i` of every block, lanes in [`sums4`]'s order. A 4 × 8 transpose:
/// unpacking pairs of rows, then pairs of pairs.
#[target_feature(enable = "avx2")]
#[inline]
fn transpose4(v: [__m256; 4]) -> [__m256; 4] {
    let t0 = _mm256_unpacklo_ps(v[0], v[1]);
    let t1 = _mm256_unpackhi_ps(v[0], v[1]);
    let t2 = _mm256_unpacklo_ps(v[2], v[3]);
    let t3 = _mm256_unpackhi_ps(v[2], v[3]);
    let (c0, c1) = unpack_pairs(t0, t2);
    let (c2, c3) = unpack_pairs(t1, t3);
    [c0, c1, c2, c3]
}

/// The low and the high 64-bit halves of each 128-bit lane of `a` and `b`, paired.
#[target_feature(enable = "avx2")]
#[inline]
fn unpack_pairs(a: __m256, b: __m256) -> (__m256, __m256) {
    let (a, b) = (_mm256_castps_pd(a), _mm256_castps_pd(b));
    (
        _mm256_castpd_ps(_mm256_unpacklo_pd(a, b)),
        _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)),
    )
}

/// Puts the lanes of [`sums4`] back in block order.
#[target_feature(enable = "avx2")]
#[inline]
fn in_block_order(v: __m256i) -> __m256i {
    _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// `|x|` (L1) or `x * x` (L2) of eight f32 cells.
#[target_feature(enable = "avx2")]
#[inline]
fn cells_f32<const SQUARE: bool>(x: __m256) -> __m256 {
    if SQUARE {
        _mm256_mul_ps(x, x)
    } else {
        _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff)))
    }
}

/// All ones in the lanes where `x` is NaN.
#[target_feature(enable = "avx2")]
#[inline]
fn nan_lanes(x: __m256) -> __m256i {
    _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x))
}

/// The keys of one-row f32 blocks of four cells (`data.len() == 4 · keys.len()`), eight blocks at
/// a time: the mean `sum / 4` (`· 0.25` is the same correctly rounded value), its magnitude bits,
/// NaN as `i32::MAX`. Returns how many blocks it did (a multiple of 8).
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn keys4_f32<const SQUARE: bool>(data: &[f32], keys: &mut [i32]) -> usize {
    let n = (data.len() / 4).min(keys.len()) / 8 * 8;
    let bytes: &[u8] = bytemuck::cast_slice(&data[..n * 4]);
    let out: &mut [u8] = bytemuck::cast_slice_mut(&mut keys[..n]);
    for (d, k) in bytes.chunks_exact(128).zip(out.chunks_exact_mut(32)) {
        let mut v = [_mm256_setzero_ps(); 4];
        for (j, vj) in v.iter_mut().enumerate() {
            *vj = cells_f32::<SQUARE>(_mm256_castsi256_ps(load(&d[j * 32..])));
        }
        let mean = _mm256_mul_ps(sums4(_mm256_setzero_ps(), v), _mm256_set1_ps(0.25));
        // NaN: all ones, then the magnitude mask gives i32::MAX.
        let bits = _mm256_or_si256(_mm256_castps_si256(mean), nan_lanes(mean));
        let key = _mm256_and_si256(bits, _mm256_set1_epi32(0x7fff_ffff));
        store(k, in_block_order(key));
    }
    n
}

/// The f32 bits of `x` (non-negative or NaN) rounded to bf16, to nearest, ties to even, in the
/// high half of each lane; NaN stays NaN.
#[target_feature(enable = "avx2")]
#[inline]
fn round_bf16(x: __m256) -> __m256i {
    let b = _mm256_castps_si256(x);
    let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
    let r = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7fff)), odd);
    let r = _mm256_and_si256(r, _mm256_set1_epi32(-65536));
    _mm256_blendv_epi8(r, b, nan_lanes(x))
}

/// Sixteen i32 keys (two vectors of [`sums4`] lane order) as sixteen i16 keys in block order.
#[target_feature(enable = "avx2")]
#[inline]
fn pack_keys16(a: __m256i, b: __m256i) -> __m256i {
    let p = _mm256_packs_epi32(in_block_order(a), in_block_order(b));
    _mm256_permute4x64_epi64::<0b11_01_10_00>(p)
}

/// Eight half-precision cells (the bits of f16 or bf16 values) as f32: `|x|` widened exactly, or
/// for L2 `x * x` rounded to the type and widened.
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn half_cells<const BF16: bool, const SQUARE: bool>(h: __m128i) -> __m256 {
    let magnitude = _mm_set1_epi16(0x7fff);
    let h = _mm_and_si128(h, magnitude);
    let x = if BF16 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
    } else {
        _mm256_cvtph_ps(h)
    };
    if !SQUARE {
        x
    } else if BF16 {
        _mm256_castsi256_ps(round_bf16(_mm256_mul_ps(x, x)))
    } else {
        let sq = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_mul_ps(x, x));
        _mm256_cvtph_ps(_mm_and_si128(sq, magnitude))
    }
}

/// The keys of eight sums of four half-precision cells, in the low half of each i32 lane: the
/// mean rounded to the type, its magnitude bits, NaN as `i16::MAX`.
#[target_feature(enable = "avx2,f16c")]
#[inline]
fn half_key<const BF16: bool>(s: __m256) -> __m256i {
    let mean = _mm256_mul_ps(s, _mm256_set1_ps(0.25));
    let bits = if BF16 {
        _mm256_srli_epi32::<16>(round_bf16(mean))
    } else {
        _mm256_cvtepu16_epi32(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(mean))
    };
    let bits = _mm256_or_si256(bits, nan_lanes(mean));
    _mm256_and_si256(bits, _mm256_set1_epi32(0x7fff))
}

/// The order-preserving keys of eight non-negative (or NaN) f32 values: their bits, NaN as
/// `i32::MAX`.
#[target_feature(enable = "avx2")]
#[inline]
fn f32_keys(x: __m256) -> __m256i {
    let bits = _mm256_or_si256(_mm256_castps_si256(x), nan_lanes(x));
    _mm256_and_si256(bits, _mm256_set1_epi32(0x7fff_ffff))
}

/// The keys and the within-block selections of one-row blocks of four cells
/// (`data.len() == 4 · keys.len()`; the bytes of f32, bf16 or f16 data, `HALF` a
/// [`scores::element`](super::scores::element) code), eight blocks at a time: what
/// `scores::keys_nibbles` computes. Key `b` goes to `keys[b]` (i32 for f32 data, i16 for the
/// half types, as bytes), and bit `i` of `nibbles[b]` is set iff cell `i` of block `b` is kept
/// when its `z` smallest cells are zeroed (cells compare by key, then by index). Returns how many
/// blocks it did (a multiple of 8).
#[target_feature(enable = "avx2,f16c")]
#[inline]
pub(crate) fn keys_nibbles4<const HALF: u8, const SQUARE: bool>(
    data: &[u8],
    z: usize,
    keys: &mut [u8],
    nibbles: &mut [u8],
) -> usize {
    let size = if HALF == NOT_HALF { 4 } else { 2 };
    let n = (data.len() / (4 * size))
        .min(keys.len() / size)
        .min(nibbles.len())
        / 8
        * 8;
    let zm1 = _mm256_set1_epi32(z as i32 - 1);
    for ((d, k), nb) in data[..n * 4 * size]
        .chunks_exact(32 * size)
        .zip(keys[..n * size].chunks_exact_mut(8 * size))
        .zip(nibbles[..n].chunks_exact_mut(8))
    {
        let mut v = [_mm256_setzero_ps(); 4];
        for (j, vj) in v.iter_mut().enumerate() {
            *vj = match HALF {
                NOT_HALF => cells_f32::<SQUARE>(_mm256_castsi256_ps(load(&d[j * 32..]))),
                BF16 => half_cells::<true, SQUARE>(pod_read_unaligned(&d[j * 16..j * 16 + 16])),
                _ => half_cells::<false, SQUARE>(pod_read_unaligned(&d[j * 16..j * 16 + 16])),
            };
        }
        let c = transpose4(v);
        // The block keys.
        let s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c[0], c[1]), c[2]), c[3]);
        let key = if HALF == NOT_HALF {
            f32_keys(_mm256_mul_ps(s, _mm256_set1_ps(0.25)))
        } else if HALF == BF16 {
            half_key::<true>(s)
        } else {
            half_key::<false>(s)
        };
        let key = in_block_order(key);
        if HALF == NOT_HALF {
            k.copy_from_slice(bytes_of(&key));
        } else {
            let p = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(key, key));
            k.copy_from_slice(&bytes_of(&p)[..16]);
        }
        // The cells' keys (the widened half values order as their bits do), and each cell's
        // rank in its block: the cells before it with a key <= its own, and after it with a
        // smaller key. Compare masks are -1 where true.
        let ck = c.map(|x| f32_keys(x));
        let mut nibble = _mm256_setzero_si256();
        for i in 0..4 {
            let mut r = _mm256_setzero_si256();
            for (j, &kj) in ck.iter().enumerate() {
                if j < i {
                    // kj <= ki: 1 + (kj > ki).
                    r = _mm256_add_epi32(
                        r,
                        _mm256_add_epi32(_mm256_set1_epi32(1), _mm256_cmpgt_epi32(kj, ck[i])),
                    );
                } else if j > i {
                    r = _mm256_sub_epi32(r, _mm256_cmpgt_epi32(ck[i], kj));
                }
            }
            let kept = _mm256_cmpgt_epi32(r, zm1);
            nibble = _mm256_or_si256(nibble, _mm256_and_si256(kept, _mm256_set1_epi32(1 << i)));
        }
        let nibble = in_block_order(nibble);
        let p = _mm256_packs_epi32(nibble, nibble);
        let p = _mm256_packus_epi16(p, p);
        // Bytes 0..4 hold blocks 0..4, bytes 16..20 blocks 4..8.
        let b: [u8; 32] = cast(p);
        nb[..4].copy_from_slice(&b[..4]);
        nb[4..].copy_from_slice(&b[16..20]);
    }
    n
}

/// The keys of one-row half-precision blocks of four cells (`data.len() == 4 · keys.len()`, the
/// bits of f16 or bf16 values), sixteen blocks at a time: cells widened to f32 exactly (L2: the
/// square rounded back to the type), summed in order, the mean rounded to the type, its magnitude
/// bits, NaN as `i16::MAX`. Returns how many blocks it did (a multiple of 16).
#[target_feature(enable = "avx2,f16c")]
#[inline]
pub(crate) fn keys4_half<const BF16: bool, const SQUARE: bool>(
    data: &[u16],
    keys: &mut [i16],
) -> usize {
    let n = (data.len() / 4).min(keys.len()) / 16 * 16;
    let bytes: &[u8] = bytemuck::cast_slice(&data[..n * 4]);
    let out: &mut [u8] = bytemuck::cast_slice_mut(&mut keys[..n]);
    for (d, k) in bytes.chunks_exact(128).zip(out.chunks_exact_mut(32)) {
        let mut halves = [_mm256_setzero_si256(); 2];
        for (h, sixteen) in halves.iter_mut().zip(d.chunks_exact(64)) {
            let mut v = [_mm256_setzero_ps(); 4];
            for (j, vj) in v.iter_mut().enumerate() {
                let h8: __m128i = pod_read_unaligned(&sixteen[j * 16..j * 16 + 16]);
                *vj = half_cells::<BF16, SQUARE>(h8);
            }
            *h = half_key::<BF16>(sums4(_mm256_setzero_ps(), v));
        }
        store(k, pack_keys16(halves[0], halves[1]));
    }
    n
}

#[cfg(test)]
mod tests {
    use super::super::scores::{
        code_bits_portable, code_run_portable, keep_nibbles, keys_exact, keys_nibbles, Key,
        NormKind, ScoreElem, L1, L2,
    };
    use super::super::tests::rng as stream;
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn code_bits64_matches_the_portable_loop() {
        if !crate::simd::has_v3() {
            return;
        }
        let mut r = stream(1);
        for _ in 0..200 {
            // Codes 0..=4 in the low bits, a selection in the high bits.
            let codes: [u8; 64] = std::array::from_fn(|_| {
                let v = r();
                (v % 5) as u8 | ((v >> 8) as u8 & 0xf8)
            });
            for c in 0..=4 {
                // SAFETY: the CPU has AVX2 (checked above).
                let got = unsafe { code_bits64(&codes, c) };
                assert_eq!(got, code_bits_portable(&codes, c), "c {c}");
            }
        }
    }

    /// An AVX2 code loop ([`codes_i32`], [`codes_i16`]).
    type CodeLoop<K> = unsafe fn(&[K], K, K, u8, &mut [u8]) -> (usize, CodeCounts);

    /// The AVX2 code loop and the portable one give the same codes and counts, for keys around
    /// the bracket's ends (and NaN), with and without a selection to keep.
    fn codes_agree<K: Key>(simd: CodeLoop<K>, key: impl Fn(u64) -> K) {
        let mut r = stream(2);
        for len in [0usize, 31, 32, 33, 100, 4096, 5000] {
            for (lo, hi) in [(10u64, 10u64), (10, 20), (0, 0), (0, 30)] {
                let keys: Vec<K> = (0..len)
                    .map(|_| match r() % 16 {
                        0 => K::MAX,
                        v => key(v.wrapping_mul(r()) % 32),
                    })
                    .collect();
                let old: Vec<u8> = (0..len).map(|_| r() as u8).collect();
                for sel_mask in [0u8, 0xf8] {
                    let (mut a, mut b) = (old.clone(), old.clone());
                    let (lo, hi) = (key(lo), key(hi));
                    // SAFETY: the CPU has AVX2 (checked by the caller).
                    let (done, head) = unsafe { simd(&keys, lo, hi, sel_mask, &mut a) };
                    assert_eq!(done, len / 32 * 32);
                    let want = code_run_portable(&keys[..done], lo, hi, sel_mask, &mut b[..done]);
                    assert_eq!(head, want, "len {len} lo {lo:?} hi {hi:?}");
                    assert_eq!(a, b, "len {len} lo {lo:?} hi {hi:?} sel {sel_mask:#x}");
                }
            }
        }
    }

    #[test]
    fn code_loops_match_the_portable_loop() {
        if !crate::simd::has_v3() {
            return;
        }
        codes_agree::<i32>(codes_i32, |v| v as i32);
        codes_agree::<i16>(codes_i16, |v| v as i16);
        // Keys at the top of the range, next to NaN's.
        codes_agree::<i32>(codes_i32, |v| i32::MAX - 40 + v as i32);
        codes_agree::<i16>(codes_i16, |v| i16::MAX - 40 + v as i16);
    }

    /// `keys_nibbles` (the AVX2 loop and the portable rest) gives [`keys_exact`]'s keys and
    /// [`keep_nibbles`]'s selections, for every number of zeros.
    fn keys_nibbles4_agree<T: ScoreElem, N: NormKind>(data: &[T]) {
        for len in [0usize, 7, 8, 9, 100, 1000] {
            let d = &data[..(4 * len).min(data.len() / 4 * 4)];
            let n = d.len() / 4;
            let mut want = vec![T::Key::default(); n];
            keys_exact::<T, N, 4>(d, &mut want);
            for z in 1..4 {
                let mut want_sel = vec![0u8; n];
                keep_nibbles::<T, N, 4>(d, z, &mut want_sel);
                let (mut got, mut got_sel) = (vec![T::Key::default(); n], vec![0u8; n]);
                keys_nibbles::<T, N, 4>(d, z, &mut got, &mut got_sel);
                assert_eq!(got, want, "{n} blocks, SQUARE {}", N::SQUARE);
                assert_eq!(got_sel, want_sel, "{n} blocks, z {z}, SQUARE {}", N::SQUARE);
            }
        }
    }

    /// `keys4_simd` (the AVX2 loop and the portable rest) gives [`keys_exact`]'s keys.
    fn keys4_agree<T: ScoreElem, N: NormKind>(data: &[T]) {
        for len in [0usize, 7, 8, 15, 16, 17, 100, 1000] {
            let d = &data[..(4 * len).min(data.len() / 4 * 4)];
            let n = d.len() / 4;
            let mut want = vec![T::Key::default(); n];
            keys_exact::<T, N, 4>(d, &mut want);
            let mut got = vec![T::Key::default(); n];
            let done = T::keys4_simd::<N>(d, &mut got);
            assert!(done <= n);
            keys_exact::<T, N, 4>(&d[done * 4..], &mut got[done..]);
            assert_eq!(got, want, "{} blocks, SQUARE {}", n, N::SQUARE);
        }
    }

    #[test]
    fn key_loops_match_the_portable_loop() {
        if !crate::simd::has_v3() {
            return;
        }
        let mut r = stream(3);
        // f32: ordinary values, ties, zeros of both signs, subnormals, infinities, NaN, and
        // values whose squares overflow or underflow.
        let specials = [
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            f32::MIN_POSITIVE,
            1e-40,
            -1e-45,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            3e38,
            1e-23,
            f32::MAX,
        ];
        let f: Vec<f32> = (0..4000)
            .map(|_| match r() % 4 {
                0 => specials[(r() % specials.len() as u64) as usize],
                1 => ((r() % 8) as f32 - 4.0) * 0.25,
                _ => f32::from_bits(r() as u32),
            })
            .collect();
        keys4_agree::<f32, L1>(&f);
        keys4_agree::<f32, L2>(&f);
        keys_nibbles4_agree::<f32, L1>(&f);
        keys_nibbles4_agree::<f32, L2>(&f);
        // Half types: any bit pattern (NaN, infinities, subnormals included), and small ties.
        let bits: Vec<u16> = (0..4000)
            .map(|_| {
                if r() % 3 == 0 {
                    0x3c00 + (r() % 4) as u16
                } else {
                    r() as u16
                }
            })
            .collect();
        let h: Vec<f16> = bits.iter().map(|&b| f16::from_bits(b)).collect();
        let b: Vec<bf16> = bits.iter().map(|&b| bf16::from_bits(b)).collect();
        keys4_agree::<f16, L1>(&h);
        keys4_agree::<f16, L2>(&h);
        keys4_agree::<bf16, L1>(&b);
        keys4_agree::<bf16, L2>(&b);
        keys_nibbles4_agree::<f16, L1>(&h);
        keys_nibbles4_agree::<f16, L2>(&h);
        keys_nibbles4_agree::<bf16, L1>(&b);
        keys_nibbles4_agree::<bf16, L2>(&b);
        // bf16 squares near the rounding boundaries (mantissas with ties).
        let b: Vec<bf16> = (0..4000u32)
            .map(|i| bf16::from_bits((0x3f80 + (i % 256)) as u16 | ((i & 1) << 15) as u16))
            .collect();
        keys4_agree::<bf16, L2>(&b);
    }
}
