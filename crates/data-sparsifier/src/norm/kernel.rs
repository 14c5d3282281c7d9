//! The mask kernel: orchestrates the score pass and the selection, then writes the mask 64 bits at
//! a time in one parallel pass over the same tasks.
//!
//! Mask layout reminder: cell `(r, c)` of an `h × w` matrix is bit `(r·w + c) % 64` of word
//! `(r·w + c) / 64`. Tasks ([`Plan`]) are runs of consecutive blocks in row-major block order:
//!
//! * usually whole block rows; a task's rows then start on a word boundary (`r·w % 64 == 0`) and on
//!   a block-row boundary, so tasks never share a word;
//! * when one block row holds more than a task's worth of cells (1-D data, fewer rows than `bh`,
//!   very wide rows), runs of block columns within a block row. Each task then writes the words
//!   that lie wholly inside its row segments, and the few words two segments share are assembled
//!   after the parallel pass.

use std::ops::Range;
use std::sync::Mutex;

use rayon::prelude::*;

use super::config::{DataNormConfig, NanPolicy, Norm};
use super::pruned_block_count;
use super::scores::{self, code, code_bits, Grid, Key, NormKind, ScoreElem, TaskStats, L1, L2};
use super::select::{self, Cut};
use crate::error::{Error, Result};
use crate::mask::Mask;

/// The block-code buffer of the fast path, kept between calls: allocating a fresh one each step
/// costs page faults (the kernel zeroes every new page) that take about a quarter of a step's time.
/// At most one buffer is kept, of one byte per block of the largest input seen; see
/// [`release_scratch`](super::release_scratch).
static CODES: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// A block-code buffer of `n` bytes (contents unspecified), taken from a pool (normally
/// [`CODES`]) and given back to it when dropped.
struct Codes<'p> {
    buf: Vec<u8>,
    pool: &'p Mutex<Vec<u8>>,
}

impl<'p> Codes<'p> {
    /// Takes the pool's buffer and sizes it to `n` bytes. Its allocation is reused whenever its
    /// *capacity* is large enough, so a small input after a large one shortens the buffer without
    /// losing the large allocation; only a larger input than any before allocates.
    fn take(pool: &'p Mutex<Vec<u8>>, n: usize) -> Codes<'p> {
        let mut buf = pool
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default();
        if buf.capacity() >= n {
            // Growing back within the capacity zeroes the new bytes (a memset of at most one byte
            // per block; no page faults, the allocation's pages were touched when first used).
            buf.resize(n, 0);
        } else {
            // Free the old buffer before allocating the larger one.
            drop(std::mem::take(&mut buf));
            buf = vec![0u8; n];
        }
        Codes { buf, pool }
    }
}

impl Drop for Codes<'_> {
    fn drop(&mut self) {
        if let Ok(mut g) = self.pool.lock() {
            if g.capacity() < self.buf.capacity() {
                *g = std::mem::take(&mut self.buf);
            }
        }
    }
}

/// Frees the kept block-code buffer; returns its size in bytes.
pub(crate) fn release_scratch() -> usize {
    CODES
        .lock()
        .map(|mut g| {
            let n = g.capacity();
            *g = Vec::new();
            n
        })
        .unwrap_or(0)
}

/// Target cells per parallel task.
const TASK_CELLS: usize = 1 << 17;

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// How the blocks are split into parallel tasks. A task is a run of consecutive blocks in row-major
/// block order, and tasks are numbered in that order, so "lowest task first" is "lowest block index
/// first" (the tie budgets rely on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Tasks of `brs` whole block rows, whose data rows fill `words` whole mask words: each task
    /// owns one contiguous run of mask words.
    Rows { brs: usize, words: usize },
    /// When one block row holds more cells than a task should (one block row of large data, such
    /// as 1-D data or fewer rows than `bh`, or very wide rows): each block row is split into
    /// `per_br` tasks of `bcs` block columns (the last one shorter), `bcs · bw` a multiple of 64.
    Cols { bcs: usize, per_br: usize },
}

impl Plan {
    /// The plan for tasks of about `task_cells` cells.
    fn new(g: &Grid, task_cells: usize) -> Plan {
        let rows0 = g.rows_of(0).len();
        if rows0.saturating_mul(g.w) > task_cells {
            // Task widths of a multiple of 64 cells: where data rows start on a word boundary (one
            // row, or rows of a multiple of 64 cells), so does every task's segment, and tasks
            // share no mask word.
            let align = 64 / gcd(g.bw % 64, 64);
            let bcs = (task_cells / rows0.saturating_mul(g.bw).max(1))
                .max(1)
                .div_ceil(align)
                .saturating_mul(align);
            return Plan::Cols {
                bcs,
                per_br: g.nbc.div_ceil(bcs),
            };
        }
        // Smallest row count that is a multiple of bh and whose cell count is a multiple of 64.
        let word_rows = 64 / gcd(g.w % 64, 64).max(1);
        let word_rows = if g.w % 64 == 0 { 1 } else { word_rows };
        let unit = g.bh / gcd(g.bh, word_rows) * word_rows;
        let unit_cells = unit.saturating_mul(g.w).max(1);
        let rows = unit.saturating_mul((task_cells / unit_cells).max(1));
        Plan::Rows {
            brs: rows / g.bh,
            words: rows.saturating_mul(g.w) / 64,
        }
    }

    /// The blocks of every task (row-major block indices), in task order.
    fn ranges(&self, g: &Grid) -> Vec<Range<usize>> {
        let nb = g.num_blocks();
        match *self {
            Plan::Rows { brs, .. } => {
                let per = brs.saturating_mul(g.nbc).max(1);
                (0..nb.div_ceil(per))
                    .map(|t| t * per..((t + 1) * per).min(nb))
                    .collect()
            }
            Plan::Cols { bcs, per_br } => (0..g.nbr)
                .flat_map(|br| {
                    (0..per_br)
                        .map(move |p| br * g.nbc + p * bcs..br * g.nbc + ((p + 1) * bcs).min(g.nbc))
                })
                .collect(),
        }
    }
}

/// For tests: the number of tasks of `h × w` data in `(bh, bw)` blocks, and whether they are
/// runs of block columns ([`Plan::Cols`]).
#[cfg(test)]
pub(crate) fn task_layout(
    h: usize,
    w: usize,
    block: (usize, usize),
    task_cells: usize,
) -> (usize, bool) {
    let g = Grid::new(h, w, block.0, block.1);
    let p = Plan::new(&g, task_cells);
    (p.ranges(&g).len(), matches!(p, Plan::Cols { .. }))
}

/// Internal size thresholds of the kernel. Tests shrink them to reach every path on small data.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Knobs {
    /// Up to this many blocks, the exact keys are selected directly (no sampled interval).
    pub small: usize,
    /// Target cells per parallel task.
    pub task_cells: usize,
}

impl Knobs {
    /// The thresholds used outside tests.
    pub(crate) const DEFAULT: Knobs = Knobs {
        small: select::SMALL,
        task_cells: TASK_CELLS,
    };
}

/// How [`run_norm`] found the mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Nothing is zeroed (`k = 0` or `zeros_per_block = 0`).
    KeepAll,
    /// Every block is pruned: no scores.
    PruneAll,
    /// The sampled interval and the block codes.
    Fast,
    /// The sampled interval missed: exact keys and a radix select.
    Fallback,
    /// Few blocks: exact keys, selected directly.
    Exact,
}

/// Where the mask pass learns which blocks are pruned.
enum Source<'a, K> {
    /// Every block is pruned.
    All,
    /// Stored block codes and the coded pass's per-task statistics (candidate keys).
    Coded(&'a [u8], &'a [TaskStats<K>]),
    /// Exact block keys (coded on the fly against `[thr, thr]`).
    Keys(&'a [K]),
}

/// Appends bits to a word slice, least significant first.
struct BitWriter<'a> {
    out: &'a mut [u64],
    idx: usize,
    acc: u64,
    pos: u32,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut [u64]) -> Self {
        BitWriter {
            out,
            idx: 0,
            acc: 0,
            pos: 0,
        }
    }
    /// Appends the low `n` bits of `bits` (`1 <= n <= 64`; higher bits must be zero).
    #[inline(always)]
    fn push(&mut self, bits: u64, n: u32) {
        debug_assert!((1..=64).contains(&n) && (n == 64 || bits >> n == 0));
        self.acc |= bits << self.pos;
        let total = self.pos + n;
        if total >= 64 {
            self.out[self.idx] = self.acc;
            self.idx += 1;
            self.acc = if self.pos == 0 {
                0
            } else {
                bits >> (64 - self.pos)
            };
            self.pos = total - 64;
        } else {
            self.pos = total;
        }
    }
    /// Appends the first `n` bits of a word slice.
    #[inline(always)]
    fn push_words(&mut self, src: &[u64], n: usize) {
        let full = n / 64;
        if self.pos == 0 {
            for (o, &w) in self.out[self.idx..self.idx + full]
                .iter_mut()
                .zip(&src[..full])
            {
                *o = w;
            }
            self.idx += full;
        } else {
            for &w in &src[..full] {
                self.push(w, 64);
            }
        }
        let rem = (n % 64) as u32;
        if rem > 0 {
            self.push(src[full] & low_bits(rem), rem);
        }
    }
    /// Appends `n` copies of one bit.
    #[inline(always)]
    fn push_fill(&mut self, keep: bool, mut n: usize) {
        let v = if keep { u64::MAX } else { 0 };
        while n >= 64 {
            self.push(v, 64);
            n -= 64;
        }
        if n > 0 {
            self.push(v & low_bits(n as u32), n as u32);
        }
    }
    fn finish(self) {
        if self.pos > 0 {
            self.out[self.idx] = self.acc;
        }
    }
}

/// The low `n` bits set (`n <= 64`).
#[inline(always)]
fn low_bits(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// `len <= 64` bits of a bitset starting at bit `start` (bits past the end read as 0).
#[inline(always)]
fn get_bits(bits: &[u64], start: usize, len: u32) -> u64 {
    let (w, o) = (start / 64, (start % 64) as u32);
    let lo = bits.get(w).copied().unwrap_or(0) >> o;
    let v = if o == 0 {
        lo
    } else {
        lo | (bits.get(w + 1).copied().unwrap_or(0) << (64 - o))
    };
    v & low_bits(len)
}

/// ORs the low `n` bits of `v` into a bitset at bit `start` (`n <= 64`).
#[inline(always)]
fn or_bits(bits: &mut [u64], start: usize, v: u64, n: u32) {
    let (w, o) = (start / 64, (start % 64) as u32);
    bits[w] |= v << o;
    if o != 0 && o + n > 64 {
        bits[w + 1] |= v >> (64 - o);
    }
}

/// Spreads flag `i` of `f` to bits `i·bw .. (i+1)·bw` (`bw` a power of two up to 64; `64 / bw`
/// flags).
#[inline(always)]
fn spread(f: u64, bw: usize) -> u64 {
    match bw {
        1 => f,
        2 => {
            let mut x = f & 0xFFFF_FFFF;
            x = (x | (x << 16)) & 0x0000_FFFF_0000_FFFF;
            x = (x | (x << 8)) & 0x00FF_00FF_00FF_00FF;
            x = (x | (x << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
            x = (x | (x << 2)) & 0x3333_3333_3333_3333;
            x = (x | (x << 1)) & 0x5555_5555_5555_5555;
            x * 0x3
        }
        4 => {
            let mut x = f & 0xFFFF;
            x = (x | (x << 24)) & 0x0000_00FF_0000_00FF;
            x = (x | (x << 12)) & 0x000F_000F_000F_000F;
            x = (x | (x << 6)) & 0x0303_0303_0303_0303;
            x = (x | (x << 3)) & 0x1111_1111_1111_1111;
            x * 0xF
        }
        8 => {
            let mut x = f & 0xFF;
            x = (x | (x << 28)) & 0x0000_000F_0000_000F;
            x = (x | (x << 14)) & 0x0003_0003_0003_0003;
            x = (x | (x << 7)) & 0x0101_0101_0101_0101;
            x * 0xFF
        }
        16 => {
            let mut x = f & 0xF;
            x = (x | (x << 30)) & 0x0000_0003_0000_0003;
            x = (x | (x << 15)) & 0x0001_0001_0001_0001;
            x * 0xFFFF
        }
        32 => ((f & 1) | ((f & 2) << 31)) * 0xFFFF_FFFF,
        _ => {
            if f & 1 == 1 {
                u64::MAX
            } else {
                0
            }
        }
    }
}

/// Builds the `w`-bit row pattern of one block row: 1 for the cells of kept blocks.
#[inline(always)]
fn row_pattern(kept: &[u64], g: &Grid, out: &mut [u64]) {
    #[inline(always)]
    fn pow2<const BW: usize>(kept: &[u64], out: &mut [u64]) {
        let per = 64 / BW;
        for (j, o) in out.iter_mut().enumerate() {
            *o = spread(get_bits(kept, j * per, per as u32), BW);
        }
    }
    match g.bw {
        1 => pow2::<1>(kept, out),
        2 => pow2::<2>(kept, out),
        4 => pow2::<4>(kept, out),
        8 => pow2::<8>(kept, out),
        16 => pow2::<16>(kept, out),
        32 => pow2::<32>(kept, out),
        64 => pow2::<64>(kept, out),
        _ => {
            let mut wr = BitWriter::new(out);
            for bc in 0..g.nbc {
                let k = (kept[bc / 64] >> (bc % 64)) & 1 == 1;
                wr.push_fill(k, g.cols_of(bc).len());
            }
            wr.finish();
        }
    }
}

/// The cells to keep in one pruned block of `M` cells when its `z` smallest are zeroed
/// (`0 < z < M`): bit `i` set = keep cell `i` (row-major in the block). Cells compare by key, then
/// by index (packed into one integer). A small sorting network finds the z-th smallest packed
/// value `t`; the kept cells are those above it. Branch-free.
#[inline(always)]
fn keep_bits_small<T: ScoreElem, N: NormKind, const M: usize>(cells: &[T], z: usize) -> u64 {
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
        _ => s.sort_unstable(),
    }
    let t = s[z - 1];
    let mut bits = 0u64;
    for (i, &v) in p.iter().enumerate() {
        bits |= ((v > t) as u64) << i;
    }
    bits
}

/// Calls `f` with the index of every pruned block (a 0 bit among the first `n` of `kept`), in
/// order.
#[inline(always)]
fn for_each_pruned(kept: &[u64], n: usize, mut f: impl FnMut(usize)) {
    for (wi, &kw) in kept.iter().enumerate() {
        let mut pruned = !kw;
        if wi == kept.len() - 1 && n % 64 != 0 {
            pruned &= (1u64 << (n % 64)) - 1;
        }
        while pruned != 0 {
            f(wi * 64 + pruned.trailing_zeros() as usize);
            pruned &= pruned - 1;
        }
    }
}

/// One data row of whole `BW`-cell blocks (`row.len() == nbc * BW`): ORs the kept cells of every
/// pruned block into the row pattern `pat` (`z < BW` cells are zeroed per block).
#[inline(always)]
fn keep_row<T: ScoreElem, N: NormKind, const BW: usize>(
    row: &[T],
    kept: &[u64],
    nbc: usize,
    z: usize,
    pat: &mut [u64],
) {
    for_each_pruned(kept, nbc, |bc| {
        let bits = keep_bits_small::<T, N, BW>(&row[bc * BW..bc * BW + BW], z);
        or_bits(pat, bc * BW, bits, BW as u32);
    });
}

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

/// Mask words of whole rows of one-row blocks of power-of-two width `bw` when a row is a whole
/// number of words: word `i` covers the `64 / bw` blocks `i·64/bw ..`. With `sel`, pruned blocks
/// keep the cells stored in their code bytes (`bw` = 2 or 4), otherwise they are zeroed.
fn words_from_codes<K: Key>(
    codes: &[u8],
    bw: usize,
    sel: bool,
    st: &mut CutState<'_, K>,
    out: &mut [u64],
) {
    let per = 64 / bw;
    let mut kept = [0u64; 1];
    for (o, cs) in out.iter_mut().zip(codes.chunks(per)) {
        st.flags(cs, &mut kept);
        let mut word = spread(kept[0], bw);
        if sel {
            for (i, c8) in cs.chunks(8).enumerate() {
                let mut b = [0u8; 8];
                b[..c8.len()].copy_from_slice(c8);
                word |= gather_selections(u64::from_le_bytes(b), bw) << (i * 8 * bw);
            }
        }
        *o = word;
    }
}

/// Mask words when every block is pruned (N:M sparsity), for consecutive whole one-row blocks of
/// `bw` = 2 or 4 cells (`data.len() == blocks · bw`) starting on a word boundary: each block keeps
/// its `bw - z` largest cells (`0 < z < bw`), found for many blocks at once by
/// [`scores::keep_nibbles_dyn`] and packed `64 / bw` blocks per word.
fn words_all_pruned<T: ScoreElem, N: NormKind>(data: &[T], bw: usize, z: usize, out: &mut [u64]) {
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

/// Mask words of the whole block rows `br0 ..` (codes `codes`, starting on a word boundary) when
/// blocks are zeroed whole and a block row holds at most 64 cells, `w` and `bw` powers of two: the
/// codes of `64 / nbc` block rows give their kept flags at once, and each block row's bits are its
/// row pattern repeated once per data row.
fn words_from_codes_short<K: Key>(
    codes: &[u8],
    g: &Grid,
    br0: usize,
    st: &mut CutState<'_, K>,
    out: &mut [u64],
) {
    debug_assert!(g.w * g.bh <= 64 && g.nbc.is_power_of_two());
    // Bit 0 of every data row of a full block row.
    let rep = (0..g.bh).fold(0u64, |r, i| r | 1 << (i * g.w));
    let per = 64 / g.nbc;
    let mut kept = [0u64; 1];
    let mut wr = BitWriter::new(out);
    for (ci, cs) in codes.chunks(64).enumerate() {
        st.flags(cs, &mut kept);
        for j in 0..cs.len() / g.nbc {
            let nrows = g.rows_of(br0 + ci * per + j).len();
            let flags = (kept[0] >> (j * g.nbc)) & low_bits(g.nbc as u32);
            // The row pattern (w bits) times rep: one copy per data row, no overlaps.
            let bits = spread(flags, g.bw).wrapping_mul(rep);
            let n = (nrows * g.w) as u32;
            wr.push(bits & low_bits(n), n);
        }
    }
    wr.finish();
}

/// Per-task scratch for the within-block selection of large blocks.
#[derive(Default)]
struct Scratch<P> {
    vals: Vec<P>,
    sel: Vec<P>,
}

/// Like [`keep_bits_small`] for any block: the kept cells of pruned block `(br, bc)` when its `z`
/// smallest of `m` real cells are zeroed (`0 < z < m`), ORed into the per-row bitsets `rows` (one
/// per data row of the block row, `row_words` words each, bit `i` = data column `c0 + i`).
#[allow(clippy::too_many_arguments)]
fn keep_cells<T: ScoreElem, N: NormKind>(
    data: &[T],
    g: &Grid,
    br: usize,
    bc: usize,
    z: usize,
    rows: &mut [u64],
    row_words: usize,
    c0: usize,
    scratch: &mut Scratch<<T::Key as Key>::Packed>,
) {
    let (rr, cc) = (g.rows_of(br), g.cols_of(bc));
    let cw = cc.len();
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
        or_bits(&mut rows[..row_words], cc.start - c0, bits, cw as u32);
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
        let row = &mut rows[ri * row_words..(ri + 1) * row_words];
        for (piece, pv) in row_vals.chunks(64).enumerate() {
            let mut bits = 0u64;
            for (j, &v) in pv.iter().enumerate() {
                bits |= ((v > t) as u64) << j;
            }
            or_bits(row, cc.start - c0 + piece * 64, bits, pv.len() as u32);
        }
    }
}

/// [`keep_bits_small`] for up to 64 cells of one row, any count.
fn keep_bits_generic<T: ScoreElem, N: NormKind>(
    cells: &[T],
    z: usize,
    scratch: &mut Scratch<<T::Key as Key>::Packed>,
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

/// Per-task state of the cut: the task's share of the blocks equal to the threshold, and its
/// candidate keys (for a cut inside the bracket), consumed in block order.
struct CutState<'a, K> {
    c: u8,
    thr: K,
    budget: usize,
    inside: &'a [K],
    cursor: usize,
}

impl<'a, K: Key> CutState<'a, K> {
    /// Task `task`'s view of the cut: its code and threshold key (everything above when there is
    /// no cut), its share of the blocks tied at the threshold, and its candidate keys.
    fn for_task(cut: Option<&Cut<K>>, src: &Source<'a, K>, task: usize) -> Self {
        let (c, thr) = match cut {
            Some(cut) => (cut.code, cut.thr),
            None => (code::ABOVE, K::MAX),
        };
        CutState {
            c,
            thr,
            budget: cut.and_then(|c| c.budgets.get(task)).copied().unwrap_or(0),
            inside: match src {
                Source::Coded(_, stats) => &stats[task].inside,
                _ => &[],
            },
            cursor: 0,
        }
    }

    /// Kept flags (1 bit per block) of one block row from its codes; returns the pruned count.
    #[inline(always)]
    fn flags(&mut self, codes: &[u8], kept: &mut [u64]) -> usize {
        let mut n_pruned = 0;
        for (kw, cs) in kept.iter_mut().zip(codes.chunks(64)) {
            let (mut keep, mut at) = code_bits(cs, self.c);
            // Blocks in the cut's code, in block order.
            while at != 0 {
                let j = at.trailing_zeros();
                at &= at - 1;
                let prune = if self.c == code::INSIDE {
                    let v = self.inside[self.cursor];
                    self.cursor += 1;
                    if v < self.thr {
                        true
                    } else if v == self.thr && self.budget > 0 {
                        self.budget -= 1;
                        true
                    } else {
                        false
                    }
                } else if self.budget > 0 {
                    self.budget -= 1;
                    true
                } else {
                    false
                };
                if !prune {
                    keep |= 1 << j;
                }
            }
            n_pruned += cs.len() - keep.count_ones() as usize;
            *kw = keep;
        }
        n_pruned
    }
}

/// Writes the whole mask (`words`) given which blocks are pruned, for [`Plan::Rows`]: task `t` is
/// block rows `t·brs ..` and owns mask words `t·words_per ..`.
#[allow(clippy::too_many_arguments)]
fn mask_pass<T: ScoreElem, N: NormKind>(
    data: &[T],
    g: &Grid,
    brs: usize,
    words_per: usize,
    zpb: usize,
    src: Source<'_, T::Key>,
    cut: Option<&Cut<T::Key>>,
    words: &mut [u64],
) {
    let row_words = g.w.div_ceil(64);
    let kept_words = g.nbc.div_ceil(64);
    let vpb = g.bh * g.bw;
    let partial_possible = zpb < vpb;
    let sel_in_codes = scores::selection_in_codes(g, zpb);
    // One-row blocks tiling every row (so block `b` is cells `b·bw ..` of the flat data, whatever
    // the row width), of a width that tiles 64-bit words, and pruned blocks either zeroed entirely
    // or carrying their kept cells in their code byte. A task's rows start on a word boundary, so
    // its mask words follow its blocks' codes without regard to where data rows begin.
    let word_path = g.bh == 1
        && g.w % g.bw == 0
        && g.bw.is_power_of_two()
        && g.bw <= 64
        && (zpb >= g.bw || (zpb > 0 && g.bw <= 4));
    // Whole blocks of several rows whose block rows (narrow rows of a power-of-two width) fit in
    // one word: each block row's bits are its row pattern repeated, from a few code bits.
    let short_block_rows = g.bh > 1
        && !partial_possible
        && g.w % g.bw == 0
        && g.w.is_power_of_two()
        && g.bw.is_power_of_two()
        && g.w * g.bh <= 64;
    words
        .par_chunks_mut(words_per.max(1))
        .enumerate()
        .for_each(|(task, out)| {
            let br0 = task * brs;
            let br1 = ((task + 1) * brs).min(g.nbr);
            let mut st = CutState::for_task(cut, &src, task);
            let thr = st.thr;
            if word_path {
                let (b0, b1) = (br0 * g.nbc, br1 * g.nbc);
                match &src {
                    Source::Coded(codes, _) => {
                        // Each mask word comes straight from the code bytes of the `64 / bw`
                        // blocks it covers, which may span several data rows (narrow rows).
                        words_from_codes(&codes[b0..b1], g.bw, sel_in_codes, &mut st, out);
                        return;
                    }
                    Source::All if zpb >= g.bw => {
                        out.fill(0);
                        return;
                    }
                    Source::All if g.bw <= 4 => {
                        // N:M with M = 2 or 4: the kept cells of every block, lanes across blocks.
                        words_all_pruned::<T, N>(&data[b0 * g.bw..b1 * g.bw], g.bw, zpb, out);
                        return;
                    }
                    _ => {}
                }
            }
            if let (true, Source::Coded(codes, _)) = (short_block_rows, &src) {
                let cs = &codes[br0 * g.nbc..br1 * g.nbc];
                words_from_codes_short(cs, g, br0, &mut st, out);
                return;
            }
            let mut kept = vec![0u64; kept_words];
            let mut pat = vec![0u64; row_words];
            let mut scratch_codes = Vec::new();
            let mut rows_buf = if partial_possible {
                vec![0u64; row_words * g.bh]
            } else {
                Vec::new()
            };
            let mut scratch = Scratch::default();
            let mut wr = BitWriter::new(out);
            for br in br0..br1 {
                let rr = g.rows_of(br);
                let nrows = rr.len();
                let n_pruned = match &src {
                    Source::All => {
                        kept.fill(0);
                        g.nbc
                    }
                    Source::Coded(codes, _) => {
                        st.flags(&codes[br * g.nbc..(br + 1) * g.nbc], &mut kept)
                    }
                    Source::Keys(keys) => {
                        scratch_codes.clear();
                        scratch_codes.extend(
                            keys[br * g.nbc..(br + 1) * g.nbc]
                                .iter()
                                .map(|&k| scores::code_of(k, thr, thr)),
                        );
                        st.flags(&scratch_codes, &mut kept)
                    }
                };
                if n_pruned == 0 {
                    for _ in 0..nrows {
                        wr.push_fill(true, g.w);
                    }
                    continue;
                }
                // Whether some pruned block of this row keeps cells: one with more real cells than
                // zpb (the widest block of the row has nrows * min(bw, w) cells).
                let whole = !(partial_possible && zpb < nrows * g.bw.min(g.w));
                if n_pruned == g.nbc && whole {
                    for _ in 0..nrows {
                        wr.push_fill(false, g.w);
                    }
                    continue;
                }
                row_pattern(&kept, g, &mut pat);
                if whole {
                    for _ in 0..nrows {
                        wr.push_words(&pat, g.w);
                    }
                    continue;
                }
                // Some pruned blocks keep their largest cells: add those to the rows' bits.
                if g.bh == 1 && g.w % g.bw == 0 {
                    // One row of whole blocks: patch the pattern in place.
                    let row = &data[rr.start * g.w..rr.end * g.w];
                    let z = zpb;
                    if let (true, Source::Coded(codes, _)) = (sel_in_codes, &src) {
                        // The score pass left each block's kept cells in its code byte.
                        let cs = &codes[br * g.nbc..(br + 1) * g.nbc];
                        for_each_pruned(&kept, g.nbc, |bc| {
                            or_bits(&mut pat, bc * g.bw, (cs[bc] >> 3) as u64, g.bw as u32);
                        });
                        wr.push_words(&pat, g.w);
                        continue;
                    }
                    match g.bw {
                        2 => keep_row::<T, N, 2>(row, &kept, g.nbc, z, &mut pat),
                        3 => keep_row::<T, N, 3>(row, &kept, g.nbc, z, &mut pat),
                        4 => keep_row::<T, N, 4>(row, &kept, g.nbc, z, &mut pat),
                        8 => keep_row::<T, N, 8>(row, &kept, g.nbc, z, &mut pat),
                        16 => keep_row::<T, N, 16>(row, &kept, g.nbc, z, &mut pat),
                        _ => {
                            let rows = &mut pat[..];
                            for_each_pruned(&kept, g.nbc, |bc| {
                                keep_cells::<T, N>(
                                    data,
                                    g,
                                    br,
                                    bc,
                                    z,
                                    rows,
                                    row_words,
                                    0,
                                    &mut scratch,
                                )
                            });
                        }
                    }
                    wr.push_words(&pat, g.w);
                    continue;
                }
                let rows = &mut rows_buf[..nrows * row_words];
                for r in rows.chunks_mut(row_words) {
                    r.copy_from_slice(&pat);
                }
                for_each_pruned(&kept, g.nbc, |bc| {
                    if zpb < nrows * g.cols_of(bc).len() {
                        keep_cells::<T, N>(data, g, br, bc, zpb, rows, row_words, 0, &mut scratch);
                    }
                });
                for r in rows.chunks(row_words) {
                    wr.push_words(r, g.w);
                }
            }
            wr.finish();
        });
}

/// Writes the bits of one row segment, data cells `s .. e` of the flat mask, from `seg` (bit `i` =
/// cell `s + i`): the mask words wholly inside the segment into `out` (words `ceil(s/64) ..
/// e/64`), and the partly covered words at either end as `(word index, bits)` into `edges`, to be
/// ORed in once every task is done.
fn write_segment(seg: &[u64], s: usize, e: usize, out: &mut [u64], edges: &mut Vec<(usize, u64)>) {
    let first = s.div_ceil(64);
    for (j, o) in out.iter_mut().enumerate() {
        *o = get_bits(seg, (first + j) * 64 - s, 64);
    }
    if s % 64 != 0 {
        let n = (64 - s % 64).min(e - s);
        edges.push((s / 64, get_bits(seg, 0, n as u32) << (s % 64)));
    }
    let last = e / 64;
    if e % 64 != 0 && last * 64 >= s {
        edges.push((last, get_bits(seg, last * 64 - s, (e % 64) as u32)));
    }
}

/// [`mask_pass`] for [`Plan::Cols`]: task `t` is block columns `p·bcs ..` of block row
/// `t / per_br` (`p = t % per_br`). Each task computes its data rows' segments and writes the mask
/// words that lie wholly inside them; the few words shared by two segments (where a segment does
/// not start or end on a word boundary) are assembled afterwards.
#[allow(clippy::too_many_arguments)]
fn mask_pass_cols<T: ScoreElem, N: NormKind>(
    data: &[T],
    g: &Grid,
    bcs: usize,
    per_br: usize,
    zpb: usize,
    src: Source<'_, T::Key>,
    cut: Option<&Cut<T::Key>>,
    words: &mut [u64],
) {
    let vpb = g.bh * g.bw;
    let partial_possible = zpb < vpb;
    let sel_in_codes = scores::selection_in_codes(g, zpb);
    let cols = |p: usize| (p * bcs, ((p + 1) * bcs).min(g.nbc));
    // Hand each task the words wholly inside its segments, one slice per data row (in order: data
    // rows, then tasks along a row, is increasing mask position).
    let mut owned: Vec<Vec<&mut [u64]>> = (0..g.nbr * per_br).map(|_| Vec::new()).collect();
    let mut rest: &mut [u64] = &mut *words;
    let mut base = 0;
    for br in 0..g.nbr {
        for r in g.rows_of(br) {
            for p in 0..per_br {
                let (bc0, bc1) = cols(p);
                let s = r * g.w + bc0 * g.bw;
                let e = r * g.w + (bc1 * g.bw).min(g.w);
                let (a, b) = (s.div_ceil(64), e / 64);
                let mine: &mut [u64] = if a < b {
                    let (_, tail) = std::mem::take(&mut rest).split_at_mut(a - base);
                    let (mine, tail) = tail.split_at_mut(b - a);
                    rest = tail;
                    base = b;
                    mine
                } else {
                    Default::default()
                };
                owned[br * per_br + p].push(mine);
            }
        }
    }
    let edges: Vec<Vec<(usize, u64)>> = owned
        .into_par_iter()
        .enumerate()
        .map(|(task, mut outs)| {
            let (br, p) = (task / per_br, task % per_br);
            let (bc0, bc1) = cols(p);
            let nb = bc1 - bc0;
            let b0 = br * g.nbc + bc0;
            let (c0, c1) = (bc0 * g.bw, (bc1 * g.bw).min(g.w));
            let cw = c1 - c0;
            let seg_words = cw.div_ceil(64);
            let rr = g.rows_of(br);
            let nrows = rr.len();
            // This task's block row over its columns, for the row pattern.
            let sub = Grid::new(nrows, cw, g.bh, g.bw);
            let mut st = CutState::for_task(cut, &src, task);
            let thr = st.thr;
            let mut kept = vec![0u64; nb.div_ceil(64)];
            let n_pruned = match &src {
                Source::All => nb,
                Source::Coded(codes, _) => st.flags(&codes[b0..b0 + nb], &mut kept),
                Source::Keys(keys) => {
                    let cs: Vec<u8> = keys[b0..b0 + nb]
                        .iter()
                        .map(|&k| scores::code_of(k, thr, thr))
                        .collect();
                    st.flags(&cs, &mut kept)
                }
            };
            let mut pat = vec![0u64; seg_words];
            row_pattern(&kept, &sub, &mut pat);
            // Whether some pruned block keeps cells (the widest block has nrows * min(bw, cw)).
            let whole = n_pruned == 0 || !(partial_possible && zpb < nrows * g.bw.min(cw));
            let mut rows_buf = Vec::new();
            let mut scratch = Scratch::default();
            if !whole {
                if g.bh == 1 && g.w % g.bw == 0 {
                    // One row of whole blocks: patch the pattern in place.
                    let row = &data[rr.start * g.w + c0..rr.start * g.w + c1];
                    match (&src, g.bw) {
                        (Source::Coded(codes, _), _) if sel_in_codes => {
                            let cs = &codes[b0..b0 + nb];
                            for_each_pruned(&kept, nb, |bc| {
                                or_bits(&mut pat, bc * g.bw, (cs[bc] >> 3) as u64, g.bw as u32);
                            });
                        }
                        (_, 2) => keep_row::<T, N, 2>(row, &kept, nb, zpb, &mut pat),
                        (_, 3) => keep_row::<T, N, 3>(row, &kept, nb, zpb, &mut pat),
                        (_, 4) => keep_row::<T, N, 4>(row, &kept, nb, zpb, &mut pat),
                        (_, 8) => keep_row::<T, N, 8>(row, &kept, nb, zpb, &mut pat),
                        (_, 16) => keep_row::<T, N, 16>(row, &kept, nb, zpb, &mut pat),
                        _ => for_each_pruned(&kept, nb, |bc| {
                            let bc = bc0 + bc;
                            let pw = seg_words;
                            keep_cells::<T, N>(data, g, br, bc, zpb, &mut pat, pw, c0, &mut scratch)
                        }),
                    }
                } else {
                    rows_buf = vec![0u64; nrows * seg_words];
                    for r in rows_buf.chunks_mut(seg_words) {
                        r.copy_from_slice(&pat);
                    }
                    let rows = &mut rows_buf[..];
                    for_each_pruned(&kept, nb, |bc| {
                        let bc = bc0 + bc;
                        if zpb < nrows * g.cols_of(bc).len() {
                            let rw = seg_words;
                            keep_cells::<T, N>(data, g, br, bc, zpb, rows, rw, c0, &mut scratch);
                        }
                    });
                }
            }
            let mut edges = Vec::new();
            for (i, out) in outs.iter_mut().enumerate() {
                let seg = if rows_buf.is_empty() {
                    &pat[..]
                } else {
                    &rows_buf[i * seg_words..(i + 1) * seg_words]
                };
                let s = (rr.start + i) * g.w + c0;
                write_segment(seg, s, s + cw, out, &mut edges);
            }
            edges
        })
        .collect();
    // Words shared by segments: every bit of the mask belongs to exactly one segment.
    for &(i, _) in edges.iter().flatten() {
        words[i] = 0;
    }
    for &(i, v) in edges.iter().flatten() {
        words[i] |= v;
    }
}

/// The NaN error for the first NaN of `data` (a parallel scan; only on the error path).
fn nan_error<T: ScoreElem>(name: &str, data: &[T], w: usize) -> Error {
    let index = data.par_iter().position_first(|x| x.is_nan()).unwrap_or(0);
    Error::NanInData {
        name: name.to_string(),
        index,
        row: index / w.max(1),
        col: index % w.max(1),
    }
}

/// Computes the mask of `h × w` data (`data.len() == h·w`, both > 0) into `mask` (same element
/// count). The config is already validated.
pub(crate) fn run<T: ScoreElem>(
    name: &str,
    data: &[T],
    h: usize,
    w: usize,
    config: &DataNormConfig,
    mask: &mut Mask,
) -> Result<()> {
    let knobs = Knobs::DEFAULT;
    match config.norm {
        Norm::L1 => run_norm::<T, L1>(name, data, h, w, config, mask, knobs).map(|_| ()),
        Norm::L2 => run_norm::<T, L2>(name, data, h, w, config, mask, knobs).map(|_| ()),
    }
}

/// Writes the mask with the pass that fits the plan.
#[allow(clippy::too_many_arguments)]
fn write_mask<T: ScoreElem, N: NormKind>(
    data: &[T],
    g: &Grid,
    plan: Plan,
    zpb: usize,
    src: Source<'_, T::Key>,
    cut: Option<&Cut<T::Key>>,
    mask: &mut Mask,
) {
    let words = &mut mask.words_mut();
    match plan {
        Plan::Rows { brs, words: per } => {
            mask_pass::<T, N>(data, g, brs, per, zpb, src, cut, words)
        }
        Plan::Cols { bcs, per_br } => {
            mask_pass_cols::<T, N>(data, g, bcs, per_br, zpb, src, cut, words)
        }
    }
}

/// [`run`] for one norm, with the size thresholds `knobs`; returns the route taken (tests check it).
pub(crate) fn run_norm<T: ScoreElem, N: NormKind>(
    name: &str,
    data: &[T],
    h: usize,
    w: usize,
    config: &DataNormConfig,
    mask: &mut Mask,
    knobs: Knobs,
) -> Result<Route> {
    let (bh, bw) = config.sparse_block_shape;
    let g = Grid::new(h, w, bh, bw);
    let nb = g.num_blocks();
    let zpb = config.zeros_per_block_effective();
    let k = pruned_block_count(config.sparsity_level, nb);
    let nan_error_policy = config.nan_policy == NanPolicy::Error;

    if k == 0 || zpb == 0 {
        // Nothing is zeroed.
        if nan_error_policy && scores::has_nan(data) {
            return Err(nan_error(name, data, w));
        }
        mask.fill(true);
        return Ok(Route::KeepAll);
    }
    let plan = Plan::new(&g, knobs.task_cells);
    if k == nb {
        // Every block is pruned (e.g. N:M sparsity): no scores are needed.
        if nan_error_policy && scores::has_nan(data) {
            return Err(nan_error(name, data, w));
        }
        write_mask::<T, N>(data, &g, plan, zpb, Source::All, None, mask);
        return Ok(Route::PruneAll);
    }
    let ranges = plan.ranges(&g);

    if nb > knobs.small {
        // Fast path: a sampled key interval, one byte per block.
        let pos = select::sample_positions(nb);
        let sample: Vec<T::Key> = pos
            .par_iter()
            .map(|&i| scores::block_key::<T, N>(data, &g, i / g.nbc, i % g.nbc))
            .collect();
        let b = select::bracket_from_sample(sample, nb, k);
        let mut codes = Codes::take(&CODES, nb);
        let codes = &mut codes.buf;
        let sel = scores::selection_in_codes(&g, zpb).then_some(zpb);
        if let Some(stats) = scores::coded_pass::<T, N>(data, &g, codes, &ranges, b, sel) {
            if nan_error_policy && stats.iter().any(|s| s.nan > 0) {
                return Err(nan_error(name, data, w));
            }
            if let Some(cut) = select::cut_from_stats(&b, &stats, k) {
                let src = Source::Coded(codes, &stats);
                write_mask::<T, N>(data, &g, plan, zpb, src, Some(&cut), mask);
                return Ok(Route::Fast);
            }
        }
    }

    // Exact keys: small data, or the sampled interval missed.
    let mut keys = vec![T::Key::default(); nb];
    let has_nan = scores::keys_pass::<T, N>(data, &g, &mut keys, &ranges);
    if nan_error_policy && has_nan {
        return Err(nan_error(name, data, w));
    }
    let (thr, route) = if nb <= knobs.small {
        (select::small_select(&keys, k), Route::Exact)
    } else {
        (select::radix_select(&keys, k), Route::Fallback)
    };
    let cut = select::cut_from_keys(&keys, &ranges, &thr);
    write_mask::<T, N>(data, &g, plan, zpb, Source::Keys(&keys), Some(&cut), mask);
    Ok(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_matches_naive() {
        for bw in [1usize, 2, 4, 8, 16, 32, 64] {
            for seed in 0..50u64 {
                let f = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (seed << 7);
                let per = 64 / bw;
                let mut want = 0u64;
                for i in 0..per {
                    if (f >> i) & 1 == 1 {
                        want |= low_bits(bw as u32) << (i * bw);
                    }
                }
                assert_eq!(spread(f & low_bits(per as u32), bw), want, "bw {bw}");
            }
        }
    }

    #[test]
    fn bit_writer_round_trips() {
        let mut out = vec![0u64; 4];
        let mut wr = BitWriter::new(&mut out);
        let mut model = Vec::new();
        for (i, n) in [3u32, 64, 1, 17, 60, 64, 2].iter().enumerate() {
            let bits = (0x5A5A_5A5A_5A5A_5A5Au64.rotate_left(i as u32)) & low_bits(*n);
            wr.push(bits, *n);
            model.extend((0..*n).map(|j| (bits >> j) & 1 == 1));
        }
        wr.finish();
        for (i, &b) in model.iter().enumerate() {
            assert_eq!((out[i / 64] >> (i % 64)) & 1 == 1, b, "bit {i}");
        }
    }

    #[test]
    fn the_code_buffer_keeps_its_allocation_across_sizes() {
        // A large input, then a small one, then the large one again: the second large one reuses
        // the first allocation (no new pages to fault in).
        let pool = Mutex::new(Vec::new());
        let (big, small) = (100_000, 1_000);
        let first = {
            let c = Codes::take(&pool, big);
            assert_eq!(c.buf.len(), big);
            c.buf.as_ptr()
        };
        {
            let c = Codes::take(&pool, small);
            assert_eq!(c.buf.len(), small);
            assert!(c.buf.capacity() >= big);
            assert_eq!(c.buf.as_ptr(), first);
        }
        {
            let c = Codes::take(&pool, big);
            assert_eq!(c.buf.len(), big);
            assert_eq!(c.buf.as_ptr(), first);
        }
        assert!(pool.lock().unwrap().capacity() >= big);
        // A larger input replaces the kept buffer.
        {
            let c = Codes::take(&pool, 2 * big);
            assert_eq!(c.buf.len(), 2 * big);
        }
        assert!(pool.lock().unwrap().capacity() >= 2 * big);
    }

    #[test]
    fn plans_align_tasks_to_words_and_block_rows() {
        for (h, w, bh) in [
            (1000, 64, 1),
            (1000, 3, 4),
            (50, 7, 3),
            (10, 100, 7),
            (5, 1, 2),
        ] {
            let g = Grid::new(h, w, bh, 2);
            let p = Plan::new(&g, TASK_CELLS);
            let Plan::Rows { brs, words } = p else {
                panic!("{h}x{w}: {p:?}")
            };
            let rows = brs * bh;
            assert!(rows > 0);
            assert_eq!(rows * w % 64, 0);
            assert_eq!(words * 64, rows * w);
            check_ranges(&g, &p.ranges(&g));
        }
    }

    /// Task ranges: consecutive, non-empty, covering every block in order.
    fn check_ranges(g: &Grid, ranges: &[Range<usize>]) {
        assert_eq!(ranges.first().map(|r| r.start), Some(0));
        assert_eq!(ranges.last().map(|r| r.end), Some(g.num_blocks()));
        assert!(ranges.windows(2).all(|p| p[0].end == p[1].start));
        assert!(ranges.iter().all(|r| !r.is_empty()));
    }

    #[test]
    fn wide_block_rows_are_split_into_runs_of_block_columns() {
        // One block row (1-D data, fewer rows than bh) and wide rows: column tasks.
        for (h, w, bh, bw) in [
            (1, 1_000_000, 1, 4),
            (4, 300_000, 4, 3),
            (3, 200_000, 4, 5),
            (2, 500_000, 1, 1),
            (1, 150_000, 1, 100),
            (1, 140_000, 7, 64),
        ] {
            let g = Grid::new(h, w, bh, bw);
            let p = Plan::new(&g, TASK_CELLS);
            let Plan::Cols { bcs, per_br } = p else {
                panic!("{h}x{w}: {p:?}")
            };
            assert_eq!(bcs * bw % 64, 0, "{h}x{w} {bw}");
            assert!(per_br >= 2, "{h}x{w}: {p:?}");
            let ranges = p.ranges(&g);
            check_ranges(&g, &ranges);
            assert_eq!(ranges.len(), g.nbr * per_br);
            for r in &ranges {
                // Within one block row, and about a task's worth of cells.
                assert_eq!(r.start / g.nbc, (r.end - 1) / g.nbc);
                let bc_cells = g.rows_of(0).len() * bw;
                assert!(r.len() * bc_cells <= TASK_CELLS + 64 * bc_cells);
            }
        }
        // A block row that fits a task keeps the row plan.
        let g = Grid::new(1, 100_000, 1, 4);
        assert!(matches!(Plan::new(&g, TASK_CELLS), Plan::Rows { .. }));
    }
}

#[cfg(test)]
mod path_tests {
    use super::*;
    use proptest::prelude::*;

    /// The sampled fast path (forced with `small = 0`) and the exact-key path give the same mask.
    fn both_paths<T: ScoreElem>(data: &[T], h: usize, w: usize, cfg: &DataNormConfig) {
        let mut a = Mask::ones([h, w]);
        let mut b = Mask::zeros([h, w]);
        let run_small = |m: &mut Mask, small: usize| {
            let knobs = Knobs {
                small,
                ..Knobs::DEFAULT
            };
            match cfg.norm {
                Norm::L1 => run_norm::<T, L1>("t", data, h, w, cfg, m, knobs),
                Norm::L2 => run_norm::<T, L2>("t", data, h, w, cfg, m, knobs),
            }
        };
        run_small(&mut a, 0).unwrap();
        run_small(&mut b, usize::MAX).unwrap();
        assert_eq!(a, b, "{h}x{w} {cfg:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn fast_path_equals_exact_path(
            h in 1usize..40, w in prop_oneof![1usize..40, Just(64usize), Just(128)],
            bh in 1usize..5, bw in prop_oneof![1usize..6, Just(8usize), Just(16)],
            sl in 0.0f64..=1.0, zpb in 0usize..30, l2 in any::<bool>(), levels in 1u32..6,
            seed in any::<u64>(), nan_every in prop_oneof![Just(0usize), 3usize..50],
        ) {
            let mut s = seed;
            let data: Vec<f32> = (0..h * w).map(|i| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                if nan_every > 0 && i % nan_every == 1 {
                    f32::NAN
                } else {
                    ((s >> 33) % levels as u64) as f32 - (levels / 2) as f32
                }
            }).collect();
            let cfg = DataNormConfig {
                sparsity_level: sl,
                sparse_block_shape: (bh, bw),
                zeros_per_block: Some(zpb.min(bh * bw)),
                norm: if l2 { Norm::L2 } else { Norm::L1 },
                nan_policy: NanPolicy::RankLast,
            };
            both_paths(&data, h, w, &cfg);
            let d64: Vec<f64> = data.iter().map(|&x| x as f64 * 0.37).collect();
            both_paths(&d64, h, w, &cfg);
            let d16: Vec<half::f16> = data.iter().map(|&x| half::f16::from_f32(x * 0.37)).collect();
            both_paths(&d16, h, w, &cfg);
        }
    }
}
