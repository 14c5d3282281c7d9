//! Within-block selection: which cells of a pruned block are kept when its `z` smallest are
//! zeroed. Cells compare by key, then by index (packed into one integer), so the selection is
//! deterministic. Blocks of up to 4 cells use small sorting networks, blocks of 8 or 16 cells a
//! branch-free rank count, both on the stack; other blocks a linear-time `select_nth_unstable` on
//! per-task scratch.

use super::scores::{Grid, Key, NormKind, ScoreElem};
use crate::mask::bits::{for_each_zero, low_bits, or_bits};

/// The cells to keep in one pruned block of `M` cells when its `z` smallest are zeroed
/// (`0 < z < M`): bit `i` set = keep cell `i` (row-major in the block). Up to 4 cells, a small
/// sorting network finds the z-th smallest packed value `t` and the kept cells are those above it;
/// larger ones are ranked by [`keep_bits_rank`].
#[inline(always)]
pub(crate) fn keep_bits_small<T: ScoreElem, N: NormKind, const M: usize>(
    cells: &[T],
    z: usize,
) -> u64 {
    if M > 4 {
        let k: [T::Key; M] = std::array::from_fn(|i| N::cell_key(cells[i]));
        return keep_bits_rank(&k, z);
    }
    let p: [<T::Key as Key>::Packed; M] =
        std::array::from_fn(|i| N::cell_key(cells[i]).pack(i as u32));
    let mut s = p;
    #[inline(always)]
    fn cas<P: Ord + Copy>(s: &mut [P], a: usize, b: usize) {
        let (x, y) = (s[a], s[b]);
        s[a] = x.min(y);
        s[b] = x.max(y);
    }
    match M {
        2 => cas(&mut s, 0, 1),
        3 => {
            cas(&mut s, 0, 1);
            cas(&mut s, 1, 2);
            cas(&mut s, 0, 1);
        }
        4 => {
            cas(&mut s, 0, 1);
            cas(&mut s, 2, 3);
            cas(&mut s, 0, 2);
            cas(&mut s, 1, 3);
            cas(&mut s, 1, 2);
        }
        _ => unreachable!("blocks of more than 4 cells are ranked above"),
    }
    let t = s[z - 1];
    let mut bits = 0u64;
    for (i, &v) in p.iter().enumerate() {
        bits |= ((v > t) as u64) << i;
    }
    bits
}

/// The kept cells of a block of `M <= 64` cells with keys `k` (row-major in the block) when its `z`
/// smallest are zeroed: bit `i` set = keep cell `i`. The rank of cell `i` is the number of cells
/// before it with a key `<=` its own plus the number after it with a smaller key (equal keys:
/// lower index first); it is kept iff its rank is at least `z`. Branch-free, `M²` compares that
/// vectorize across the cells (no sort, no scratch).
#[inline(always)]
pub(crate) fn keep_bits_rank<K: Key, const M: usize>(k: &[K; M], z: usize) -> u64 {
    let mut r = [0u32; M];
    for (j, &kj) in k.iter().enumerate() {
        for (i, (ri, &ki)) in r.iter_mut().zip(k).enumerate() {
            *ri += ((kj < ki) | ((j < i) & (kj == ki))) as u32;
        }
    }
    r.iter()
        .enumerate()
        .fold(0u64, |b, (i, &ri)| b | (((ri as usize >= z) as u64) << i))
}

/// [`keep_bits_rank`] for a whole pruned block of several rows of `M` real cells in all: rows
/// `rr`, columns `cc` of the `w`-wide `data`.
#[inline(always)]
fn keep_bits_block<T: ScoreElem, N: NormKind, const M: usize>(
    data: &[T],
    w: usize,
    rr: std::ops::Range<usize>,
    cc: std::ops::Range<usize>,
    z: usize,
) -> u64 {
    let mut k = [T::Key::MIN; M];
    let cw = cc.len();
    for (kr, r) in k.chunks_exact_mut(cw).zip(rr) {
        for (kc, &x) in kr.iter_mut().zip(&data[r * w + cc.start..r * w + cc.end]) {
            *kc = N::cell_key(x);
        }
    }
    keep_bits_rank(&k, z)
}

/// One data row of whole `BW`-cell blocks (`row.len() == nbc * BW`): ORs the kept cells of every
/// pruned block (a 0 in `kept`) into the row pattern `pat` (`z < BW` cells are zeroed per block).
#[inline(always)]
pub(crate) fn keep_row<T: ScoreElem, N: NormKind, const BW: usize>(
    row: &[T],
    kept: &[u64],
    nbc: usize,
    z: usize,
    pat: &mut [u64],
) {
    for_each_zero(kept, nbc, |bc| {
        let bits = keep_bits_small::<T, N, BW>(&row[bc * BW..bc * BW + BW], z);
        or_bits(pat, bc * BW, bits, BW as u32);
    });
}

/// Per-task scratch for the within-block selection of large blocks.
pub(crate) struct CellScratch<P> {
    vals: Vec<P>,
    sel: Vec<P>,
}

impl<P> Default for CellScratch<P> {
    fn default() -> Self {
        CellScratch {
            vals: Vec::new(),
            sel: Vec::new(),
        }
    }
}

/// The per-row bits of a block row being assembled: `rows` holds one bitset per data row of the
/// block row, `row_words` words each, bit `i` = data column `c0 + i`.
pub(crate) struct RowBits<'a> {
    pub rows: &'a mut [u64],
    pub row_words: usize,
    pub c0: usize,
}

/// Like [`keep_bits_small`] for any block: the kept cells of pruned block `(br, bc)` when its `z`
/// smallest of `m` real cells are zeroed (`0 < z < m`), ORed into `out`.
#[inline(always)]
pub(crate) fn keep_cells<T: ScoreElem, N: NormKind>(
    data: &[T],
    g: &Grid,
    (br, bc): (usize, usize),
    z: usize,
    out: &mut RowBits<'_>,
    scratch: &mut CellScratch<<T::Key as Key>::Packed>,
) {
    let (rr, cc) = (g.rows_of(br), g.cols_of(bc));
    let cw = cc.len();
    let at = cc.start - out.c0;
    if rr.len() == 1 && cw <= 16 {
        let cells = &data[rr.start * g.w + cc.start..rr.start * g.w + cc.end];
        let bits = match cw {
            2 => keep_bits_small::<T, N, 2>(cells, z),
            3 => keep_bits_small::<T, N, 3>(cells, z),
            4 => keep_bits_small::<T, N, 4>(cells, z),
            8 => keep_bits_small::<T, N, 8>(cells, z),
            16 => keep_bits_small::<T, N, 16>(cells, z),
            _ => keep_bits_generic::<T, N>(cells, z, scratch),
        };
        or_bits(&mut out.rows[..out.row_words], at, bits, cw as u32);
        return;
    }
    let m = rr.len() * cw;
    if m == 8 || m == 16 {
        // Small blocks of several rows: ranked on the stack, branch-free.
        let bits = if m == 8 {
            keep_bits_block::<T, N, 8>(data, g.w, rr.clone(), cc, z)
        } else {
            keep_bits_block::<T, N, 16>(data, g.w, rr.clone(), cc, z)
        };
        for ri in 0..rr.len() {
            let row = &mut out.rows[ri * out.row_words..(ri + 1) * out.row_words];
            let rb = (bits >> (ri * cw)) & low_bits(cw as u32);
            or_bits(row, at, rb, cw as u32);
        }
        return;
    }
    let vals = &mut scratch.vals;
    vals.clear();
    let mut i = 0u32;
    for r in rr.clone() {
        for &x in &data[r * g.w + cc.start..r * g.w + cc.end] {
            vals.push(N::cell_key(x).pack(i));
            i += 1;
        }
    }
    // t = the z-th smallest packed value; exactly z values are <= t (packed values are distinct).
    scratch.sel.clear();
    scratch.sel.extend_from_slice(vals);
    let t = *scratch.sel.select_nth_unstable(z - 1).1;
    for (ri, row_vals) in vals.chunks(cw).enumerate() {
        let row = &mut out.rows[ri * out.row_words..(ri + 1) * out.row_words];
        for (piece, pv) in row_vals.chunks(64).enumerate() {
            let mut bits = 0u64;
            for (j, &v) in pv.iter().enumerate() {
                bits |= ((v > t) as u64) << j;
            }
            or_bits(row, at + piece * 64, bits, pv.len() as u32);
        }
    }
}

/// [`keep_bits_small`] for up to 64 cells of one row, any count.
fn keep_bits_generic<T: ScoreElem, N: NormKind>(
    cells: &[T],
    z: usize,
    scratch: &mut CellScratch<<T::Key as Key>::Packed>,
) -> u64 {
    scratch.vals.clear();
    scratch.vals.extend(
        cells
            .iter()
            .enumerate()
            .map(|(i, &x)| N::cell_key(x).pack(i as u32)),
    );
    scratch.sel.clear();
    scratch.sel.extend_from_slice(&scratch.vals);
    let t = *scratch.sel.select_nth_unstable(z - 1).1;
    scratch
        .vals
        .iter()
        .enumerate()
        .fold(0u64, |b, (i, &v)| b | (((v > t) as u64) << i))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rank count keeps exactly the cells above the z-th smallest (key, index) pair.
    #[test]
    fn rank_count_matches_a_sort() {
        let mut s = 7u64;
        for case in 0..2000 {
            let levels = 1 + case % 7;
            let k: [i32; 16] = std::array::from_fn(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = ((s >> 33) % levels as u64) as i32;
                if v == 6 {
                    i32::MAX
                } else {
                    v
                }
            });
            for z in 1..16 {
                let mut p: Vec<(i32, usize)> = k.iter().copied().zip(0..).collect();
                p.sort_unstable();
                let want = p[z..].iter().fold(0u64, |b, &(_, i)| b | 1 << i);
                assert_eq!(keep_bits_rank(&k, z), want, "{k:?} z={z}");
                let k8: [i32; 8] = std::array::from_fn(|i| k[i]);
                if z < 8 {
                    let mut p: Vec<(i32, usize)> = k8.iter().copied().zip(0..).collect();
                    p.sort_unstable();
                    let want = p[z..].iter().fold(0u64, |b, &(_, i)| b | 1 << i);
                    assert_eq!(keep_bits_rank(&k8, z), want, "{k8:?} z={z}");
                }
            }
        }
    }
}
