//! The inner loops of the lookups over a compact table: add one stored row's kept blocks into a
//! bag's accumulator, for a block width known at compile time (so each block is a fixed-size
//! run of values the compiler vectorizes).
//!
//! Each cell is added as the dense bag adds it (`acc + x` or `acc + x · w`, in the accumulator's
//! type), so a lookup over the compact table equals the one over the expanded table bit for bit;
//! the pruned cells are +0.0 there, and adding +0.0 to an accumulator that started at +0.0
//! changes nothing.

use crate::dtype::Element;
use crate::quant::RowParams;

/// How a row's kept blocks are stored.
#[derive(Clone, Copy)]
pub(crate) enum RowValues<'r, T> {
    /// The values as they are, block after block.
    Float(&'r [T]),
    /// Int8 codes, block after block, and the row's parameters.
    Int8(&'r [u8], RowParams),
    /// Int4 codes, two a byte (element 0 in the low nibble), and the row's parameters.
    Int4(&'r [u8], RowParams),
    /// Int2 codes, four a byte (element 0 in the low bits), and the row's parameters.
    Int2(&'r [u8], RowParams),
}

/// Code `k` of a row of `BITS`-bit codes (4 or 2) packed from the low bits of each byte up, as
/// [`RowCodec::code_at`](crate::quant::RowCodec::code_at) reads it, without its divisions.
#[inline(always)]
pub(crate) fn packed_code<const BITS: u32>(codes: &[u8], k: usize) -> u8 {
    let per = (8 / BITS) as usize;
    let shift = (k % per) as u32 * BITS;
    (codes[k / per] >> shift) & ((1u8 << BITS) - 1)
}

/// Adds the kept blocks of one row (`bits`: bit `j` set when block `j` is kept; its values come
/// next in `vals`) into `acc`, each cell times `w` if given.
#[inline(always)]
pub(crate) fn add_blocks<T: Element>(
    bw: usize,
    acc: &mut [T::Acc],
    vals: RowValues<'_, T>,
    bits: u32,
    w: Option<T::Acc>,
) {
    match bw {
        1 => add_fixed::<T, 1>(acc, vals, bits, w),
        2 => add_fixed::<T, 2>(acc, vals, bits, w),
        4 => add_fixed::<T, 4>(acc, vals, bits, w),
        8 => add_fixed::<T, 8>(acc, vals, bits, w),
        16 => add_fixed::<T, 16>(acc, vals, bits, w),
        32 => add_fixed::<T, 32>(acc, vals, bits, w),
        _ => add_any::<T>(bw, acc, vals, bits, w),
    }
}

#[inline(always)]
fn add_fixed<T: Element, const BW: usize>(
    acc: &mut [T::Acc],
    vals: RowValues<'_, T>,
    bits: u32,
    w: Option<T::Acc>,
) {
    match w {
        None => each_block::<T, BW>(acc, vals, bits, |x| x),
        Some(w) => each_block::<T, BW>(acc, vals, bits, |x| x * w),
    }
}

/// The value of a code as the dense (expanded) table holds it.
#[inline(always)]
fn decoded<T: Element>(p: RowParams, code: u8) -> T::Acc {
    T::from_f64(f64::from(p.decode(code))).to_acc()
}

#[inline(always)]
fn each_block<T: Element, const BW: usize>(
    acc: &mut [T::Acc],
    vals: RowValues<'_, T>,
    mut bits: u32,
    scale: impl Fn(T::Acc) -> T::Acc,
) {
    let mut k = 0usize; // values (codes) of the row used so far
    while bits != 0 {
        let c0 = bits.trailing_zeros() as usize * BW;
        bits &= bits - 1;
        let Some(Ok(a)) = acc.get_mut(c0..c0 + BW).map(<&mut [T::Acc; BW]>::try_from) else {
            return;
        };
        match vals {
            // Each block is read into a local array and added as one, so that the compiler
            // makes it one vector load, add and store (adding through `a` cell by cell it
            // left them scalar).
            RowValues::Float(v) => {
                let Some(Ok(v)) = v.get(k..k + BW).map(<&[T; BW]>::try_from) else {
                    return;
                };
                let mut t = *a;
                for i in 0..BW {
                    t[i] = t[i] + scale(v[i].to_acc());
                }
                *a = t;
            }
            RowValues::Int8(codes, p) => {
                let Some(Ok(c)) = codes.get(k..k + BW).map(<&[u8; BW]>::try_from) else {
                    return;
                };
                let mut t = *a;
                for i in 0..BW {
                    t[i] = t[i] + scale(decoded::<T>(p, c[i]));
                }
                *a = t;
            }
            RowValues::Int4(codes, p) => {
                if (k + BW).div_ceil(2) > codes.len() {
                    return;
                }
                let mut t = *a;
                for (i, a) in t.iter_mut().enumerate() {
                    *a = *a + scale(decoded::<T>(p, packed_code::<4>(codes, k + i)));
                }
                *a = t;
            }
            RowValues::Int2(codes, p) => {
                if (k + BW).div_ceil(4) > codes.len() {
                    return;
                }
                let mut t = *a;
                for (i, a) in t.iter_mut().enumerate() {
                    *a = *a + scale(decoded::<T>(p, packed_code::<2>(codes, k + i)));
                }
                *a = t;
            }
        }
        k += BW;
    }
}

/// [`add_blocks`] for any block width.
fn add_any<T: Element>(
    bw: usize,
    acc: &mut [T::Acc],
    vals: RowValues<'_, T>,
    mut bits: u32,
    w: Option<T::Acc>,
) {
    let mut k = 0usize;
    while bits != 0 {
        let c0 = bits.trailing_zeros() as usize * bw;
        bits &= bits - 1;
        for (i, a) in acc.iter_mut().skip(c0).take(bw).enumerate() {
            let at = k + i;
            let x = match vals {
                RowValues::Float(v) => v.get(at).map(|x| x.to_acc()),
                RowValues::Int8(c, p) => c.get(at).map(|&q| decoded::<T>(p, q)),
                RowValues::Int4(c, p) => {
                    (at / 2 < c.len()).then(|| decoded::<T>(p, packed_code::<4>(c, at)))
                }
                RowValues::Int2(c, p) => {
                    (at / 4 < c.len()).then(|| decoded::<T>(p, packed_code::<2>(c, at)))
                }
            };
            let Some(x) = x else { return };
            *a = *a + w.map_or(x, |w| x * w);
        }
        k += bw;
    }
}

/// A table's stored values of one kind, for the kernels monomorphized per encoding and block
/// width ([`add_row_fixed`]): the lookups pick the kind once per forward, not once per row.
pub(crate) trait Codes<T: Element>: Copy + Sync {
    /// Adds values `k .. k + BW` of the row whose first value (code byte) is at `at`, decoded
    /// with `p`, each through `scale`, into `t`; `None` if they are out of range.
    fn add<const BW: usize>(
        self,
        at: usize,
        k: usize,
        p: RowParams,
        t: &mut [T::Acc; BW],
        scale: impl Fn(T::Acc) -> T::Acc,
    ) -> Option<()>;
}

/// Float values as they are.
#[derive(Clone, Copy)]
pub(crate) struct FloatCodes<'a, T>(pub(crate) &'a [T]);
/// Int8 codes, a byte each.
#[derive(Clone, Copy)]
pub(crate) struct Int8Codes<'a>(pub(crate) &'a [u8]);
/// `BITS`-bit codes (4 or 2), packed from the low bits of each byte up.
#[derive(Clone, Copy)]
pub(crate) struct PackedCodes<'a, const BITS: u32>(pub(crate) &'a [u8]);

impl<T: Element> Codes<T> for FloatCodes<'_, T> {
    #[inline(always)]
    fn add<const BW: usize>(
        self,
        at: usize,
        k: usize,
        _: RowParams,
        t: &mut [T::Acc; BW],
        scale: impl Fn(T::Acc) -> T::Acc,
    ) -> Option<()> {
        let v: &[T; BW] = self.0.get(at + k..at + k + BW)?.try_into().ok()?;
        for i in 0..BW {
            t[i] = t[i] + scale(v[i].to_acc());
        }
        Some(())
    }
}

impl<T: Element> Codes<T> for Int8Codes<'_> {
    #[inline(always)]
    fn add<const BW: usize>(
        self,
        at: usize,
        k: usize,
        p: RowParams,
        t: &mut [T::Acc; BW],
        scale: impl Fn(T::Acc) -> T::Acc,
    ) -> Option<()> {
        let c: &[u8; BW] = self.0.get(at + k..at + k + BW)?.try_into().ok()?;
        for i in 0..BW {
            t[i] = t[i] + scale(decoded::<T>(p, c[i]));
        }
        Some(())
    }
}

impl<T: Element, const BITS: u32> Codes<T> for PackedCodes<'_, BITS> {
    #[inline(always)]
    fn add<const BW: usize>(
        self,
        at: usize,
        k: usize,
        p: RowParams,
        t: &mut [T::Acc; BW],
        scale: impl Fn(T::Acc) -> T::Acc,
    ) -> Option<()> {
        let per = (8 / BITS) as usize;
        let row = self.0.get(at..at + (k + BW).div_ceil(per))?;
        for (i, t) in t.iter_mut().enumerate() {
            *t = *t + scale(decoded::<T>(p, packed_code::<BITS>(row, k + i)));
        }
        Some(())
    }
}

/// Adds one row's kept blocks (`bits`, its values from `at` in `codes`, decoded with `p`) into
/// `acc`, each cell times `w` if given: [`add_blocks`] with the encoding and block width fixed.
#[inline(always)]
pub(crate) fn add_row_fixed<T: Element, C: Codes<T>, const BW: usize>(
    codes: C,
    (at, bits, p): (usize, u32, RowParams),
    acc: &mut [T::Acc],
    w: Option<T::Acc>,
) {
    match w {
        None => each_fixed::<T, C, BW>(codes, (at, bits, p), acc, |x| x),
        Some(w) => each_fixed::<T, C, BW>(codes, (at, bits, p), acc, |x| x * w),
    }
}

#[inline(always)]
fn each_fixed<T: Element, C: Codes<T>, const BW: usize>(
    codes: C,
    (at, mut bits, p): (usize, u32, RowParams),
    acc: &mut [T::Acc],
    scale: impl Fn(T::Acc) -> T::Acc,
) {
    let mut k = 0usize;
    while bits != 0 {
        let c0 = bits.trailing_zeros() as usize * BW;
        bits &= bits - 1;
        let Some(Ok(a)) = acc.get_mut(c0..c0 + BW).map(<&mut [T::Acc; BW]>::try_from) else {
            return;
        };
        let mut t = *a;
        if codes.add::<BW>(at, k, p, &mut t, &scale).is_none() {
            return;
        }
        *a = t;
        k += BW;
    }
}
