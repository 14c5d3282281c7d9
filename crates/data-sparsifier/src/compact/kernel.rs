//! The inner loops of the lookups over a compact table: add one stored row's kept blocks into a
//! bag's accumulator, monomorphized per encoding ([`Codes`]) and, for the common widths, per
//! block width (so each block is a fixed-size run of values the compiler vectorizes).
//!
//! Each cell is added as the dense bag adds it (`acc + x` or `acc + x · w`, in the accumulator's
//! type), so a lookup over the compact table equals the one over the expanded table bit for bit;
//! the pruned cells are +0.0 there, and adding +0.0 to an accumulator that started at +0.0
//! changes nothing.

use crate::dtype::Element;
use crate::quant::RowParams;

/// Code `k` of a row of `BITS`-bit codes (4 or 2) packed from the low bits of each byte up, as
/// [`RowCodec::code_at`](crate::quant::RowCodec::code_at) reads it, without its divisions.
#[inline(always)]
pub(crate) fn packed_code<const BITS: u32>(codes: &[u8], k: usize) -> u8 {
    let per = (8 / BITS) as usize;
    let shift = (k % per) as u32 * BITS;
    (codes[k / per] >> shift) & ((1u8 << BITS) - 1)
}

/// The value of a code as the dense (expanded) table holds it.
#[inline(always)]
fn decoded<T: Element>(p: RowParams, code: u8) -> T::Acc {
    T::from_f64(f64::from(p.decode(code))).to_acc()
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

/// `t[i] += scale(value(v[i]))` for a block of `BW` stored items.
#[inline(always)]
fn add_each<T: Element, X: Copy, const BW: usize>(
    t: &mut [T::Acc; BW],
    v: &[X; BW],
    value: impl Fn(X) -> T::Acc,
    scale: impl Fn(T::Acc) -> T::Acc,
) {
    for i in 0..BW {
        t[i] = t[i] + scale(value(v[i]));
    }
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
        add_each::<T, T, BW>(t, v, |x| x.to_acc(), scale);
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
        add_each::<T, u8, BW>(t, c, |q| decoded::<T>(p, q), scale);
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
/// `acc`, each cell times `w` if given, with the encoding and block width fixed at compile time.
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

/// [`add_row_fixed`] for a block width known only at run time (the widths the lookups do not
/// monomorphize): each cell of a kept block through `Codes::add` as a block of one.
#[inline(always)]
pub(crate) fn add_row_any<T: Element, C: Codes<T>>(
    bw: usize,
    codes: C,
    (at, mut bits, p): (usize, u32, RowParams),
    acc: &mut [T::Acc],
    w: Option<T::Acc>,
) {
    let scale = |x: T::Acc| w.map_or(x, |w| x * w);
    let mut k = 0usize;
    while bits != 0 {
        let c0 = bits.trailing_zeros() as usize * bw;
        bits &= bits - 1;
        let Some(block) = acc.get_mut(c0..c0 + bw) else {
            return;
        };
        for (i, a) in block.iter_mut().enumerate() {
            let mut t = [*a];
            if codes.add::<1>(at, k + i, p, &mut t, scale).is_none() {
                return;
            }
            *a = t[0];
        }
        k += bw;
    }
}
