//! Word-at-a-time routes of the mask pass: mask words assembled straight from block codes (or, for
//! N:M sparsity, from the data) without a per-row pattern, for the common narrow block shapes.

use super::pass::CutState;
use super::scores::{self, Grid, Key, NormKind, ScoreElem};
use crate::mask::bits::{low_bits, Spread};
use crate::mask::SpanWriter;

/// The within-block selections stored in bits 3.. of eight code bytes (blocks of `bw` = 2 or 4
/// cells), packed side by side: `bw` bits per block, block `i` at bit `i·bw`.
#[inline(always)]
fn gather_selections(v: u64, bw: usize) -> u64 {
    if bw == 4 {
        let mut x = (v >> 3) & 0x0F0F_0F0F_0F0F_0F0F;
        x = (x | (x >> 4)) & 0x00FF_00FF_00FF_00FF;
        x = (x | (x >> 8)) & 0x0000_FFFF_0000_FFFF;
        (x | (x >> 16)) & 0xFFFF_FFFF
    } else {
        let mut x = (v >> 3) & 0x0303_0303_0303_0303;
        x = (x | (x >> 6)) & 0x000F_000F_000F_000F;
        x = (x | (x >> 12)) & 0x0000_00FF_0000_00FF;
        (x | (x >> 24)) & 0xFFFF
    }
}

/// Mask words of consecutive one-row blocks of power-of-two width `bw` starting on a word
/// boundary: word `i` covers the `64 / bw` blocks `i·64/bw ..`. With `sel`, pruned blocks keep the
/// cells stored in their code bytes (`bw` = 2 or 4), otherwise they are zeroed.
#[inline(always)]
pub(crate) fn words_from_codes<K: Key>(
    codes: &[u8],
    bw: usize,
    sel: bool,
    st: &mut CutState<'_, K>,
    out: &mut [u64],
) {
    // The kept flags of 64 blocks at a time: `bw` mask words.
    let per = 64 / bw;
    let (sp, low) = (Spread::new(bw), low_bits(per as u32));
    let mut kept = [0u64; 1];
    for (ow, cs) in out.chunks_mut(bw).zip(codes.chunks(64)) {
        st.flags(cs, &mut kept);
        for (i, o) in ow.iter_mut().enumerate() {
            let mut word = sp.of((kept[0] >> (i * per)) & low);
            if sel {
                let cw = &cs[(i * per).min(cs.len())..((i + 1) * per).min(cs.len())];
                for (j, c8) in cw.chunks(8).enumerate() {
                    let mut b = [0u8; 8];
                    b[..c8.len()].copy_from_slice(c8);
                    word |= gather_selections(u64::from_le_bytes(b), bw) << (j * 8 * bw);
                }
            }
            *o = word;
        }
    }
}

/// Mask words when every block is pruned (N:M sparsity), for consecutive whole one-row blocks of
/// `bw` = 2 or 4 cells (`data.len() == blocks · bw`) starting on a word boundary: each block keeps
/// its `bw - z` largest cells (`0 < z < bw`), found for many blocks at once by
/// [`scores::keep_nibbles_dyn`] and packed `64 / bw` blocks per word.
#[inline(always)]
pub(crate) fn words_all_pruned<T: ScoreElem, N: NormKind>(
    data: &[T],
    bw: usize,
    z: usize,
    out: &mut [u64],
) {
    // Groups of whole words' worth of blocks, so the kept-cell bytes stay in L1.
    const GROUP_WORDS: usize = 256;
    let per = 64 / bw;
    let mut sel = vec![0u8; GROUP_WORDS * per];
    for (d, o) in data
        .chunks(GROUP_WORDS * 64)
        .zip(out.chunks_mut(GROUP_WORDS))
    {
        let sel = &mut sel[..d.len() / bw];
        scores::keep_nibbles_dyn::<T, N>(d, bw, z, sel);
        for (w, cs) in o.iter_mut().zip(sel.chunks(per)) {
            let mut word = 0;
            for (i, c8) in cs.chunks(8).enumerate() {
                let mut b = [0u8; 8];
                b[..c8.len()].copy_from_slice(c8);
                // The selections sit in bits 0..bw of each byte; gather_selections reads bits 3...
                word |= gather_selections(u64::from_le_bytes(b) << 3, bw) << (i * 8 * bw);
            }
            *w = word;
        }
    }
}

/// The bits of the whole block rows `br0 ..` (codes `codes`) when blocks are zeroed whole and a
/// block row holds at most 64 cells, `w` and `bw` powers of two: the codes of `64 / nbc` block
/// rows give their kept flags at once, and each block row's bits are its row pattern repeated once
/// per data row.
#[inline(always)]
pub(crate) fn words_from_codes_short<K: Key>(
    codes: &[u8],
    g: &Grid,
    br0: usize,
    st: &mut CutState<'_, K>,
    wr: &mut SpanWriter<'_>,
) {
    debug_assert!(g.w * g.bh <= 64 && g.nbc.is_power_of_two());
    // Bit 0 of every data row of a full block row.
    let rep = (0..g.bh).fold(0u64, |r, i| r | 1 << (i * g.w));
    let per = 64 / g.nbc;
    let sp = Spread::new(g.bw);
    let mut kept = [0u64; 1];
    for (ci, cs) in codes.chunks(64).enumerate() {
        st.flags(cs, &mut kept);
        for j in 0..cs.len() / g.nbc {
            let nrows = g.rows_of(br0 + ci * per + j).len();
            let flags = (kept[0] >> (j * g.nbc)) & low_bits(g.nbc as u32);
            // The row pattern (w bits) times rep: one copy per data row, no overlaps.
            let bits = sp.of(flags).wrapping_mul(rep);
            let n = (nrows * g.w) as u32;
            wr.push(bits & low_bits(n), n);
        }
    }
}

/// The words of the whole block rows `br0 ..` (codes `codes`) when blocks are zeroed whole, rows
/// are whole words (`w % 64 == 0`) and `bw` a power of two: each block row's first data row comes
/// from its codes ([`words_from_codes`]) and is copied to its other rows.
#[inline(always)]
pub(crate) fn words_from_codes_rows<K: Key>(
    codes: &[u8],
    g: &Grid,
    br0: usize,
    st: &mut CutState<'_, K>,
    out: &mut [u64],
) {
    debug_assert!(g.w % 64 == 0 && g.bw.is_power_of_two());
    let rw = g.w / 64;
    let mut at = 0;
    for (i, cs) in codes.chunks(g.nbc).enumerate() {
        let n = g.rows_of(br0 + i).len() * rw;
        let (row, rest) = out[at..at + n].split_at_mut(rw);
        words_from_codes(cs, g.bw, false, st, row);
        for r in rest.chunks_exact_mut(rw) {
            r.copy_from_slice(row);
        }
        at += n;
    }
}
