//! The mask pass: given which blocks are pruned, writes the mask 64 bits at a time in one parallel
//! pass over the planned tasks. One function serves every task layout: a task is a run of blocks,
//! handled piece by piece (the part of the run in one block row), and the mask's
//! [`SpanWriter`] places each piece's data rows wherever the task's spans lie.

use std::marker::PhantomData;
use std::ops::Range;

use super::networks::{keep_cells, keep_row, CellScratch, RowBits};
use super::plan;
use super::scores::{self, code, code_bits, Grid, Key, NormKind, ScoreElem, TaskStats};
use super::select::Cut;
use super::words;
use crate::mask::bits::{for_each_zero, get_bits, or_bits, set_bit_range, Spread};
use crate::mask::{Mask, SpanWriter};

/// Where the mask pass learns which blocks are pruned.
pub(crate) enum Source<'a, K> {
    /// Every block is pruned.
    All,
    /// Stored block codes and the coded pass's per-task statistics (candidate keys).
    Coded(&'a [u8], &'a [TaskStats<K>]),
    /// Exact block keys (coded on the fly against `[thr, thr]`).
    Keys(&'a [K]),
}

/// Per-task state of the cut: the task's share of the blocks equal to the threshold, and its
/// candidate keys (for a cut inside the bracket), consumed in block order.
pub(crate) struct CutState<'a, K> {
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

    /// Kept flags (1 bit per block) of a run of blocks from their codes; returns the pruned count.
    #[inline(always)]
    pub(crate) fn flags(&mut self, codes: &[u8], kept: &mut [u64]) -> usize {
        let mut n_pruned = 0;
        for (kw, cs) in kept.iter_mut().zip(codes.chunks(64)) {
            let (mut keep, mut at) = code_bits(cs, self.c);
            // Blocks in the cut's code, in block order.
            while at != 0 {
                let j = at.trailing_zeros();
                at &= at - 1;
                // Branch-free: inside the bracket, whether a key is below the threshold is a
                // coin toss for the branch predictor.
                let (below, tied) = if self.c == code::INSIDE {
                    let v = self.inside[self.cursor];
                    self.cursor += 1;
                    (v < self.thr, v == self.thr)
                } else {
                    (false, true)
                };
                let take = tied & (self.budget > 0);
                self.budget -= take as usize;
                keep |= ((!(below | take)) as u64) << j;
            }
            n_pruned += cs.len() - keep.count_ones() as usize;
            *kw = keep;
        }
        n_pruned
    }
}

/// Builds the `w`-bit row pattern of one block row (or piece of one, `g` its sub-grid): 1 for the
/// cells of kept blocks.
#[inline(always)]
fn row_pattern(kept: &[u64], g: &Grid, out: &mut [u64]) {
    #[inline(always)]
    fn pow2<const BW: usize>(kept: &[u64], out: &mut [u64]) {
        let (per, sp) = (64 / BW, Spread::new(BW));
        for (j, o) in out.iter_mut().enumerate() {
            *o = sp.of(get_bits(kept, j * per, per as u32));
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
            out.fill(0);
            for bc in 0..g.nbc {
                if (kept[bc / 64] >> (bc % 64)) & 1 == 1 {
                    let cols = g.cols_of(bc);
                    set_bit_range(out, cols.start, cols.end, true);
                }
            }
        }
    }
}

/// Which whole-task routes the grid allows (fixed for one pass).
struct Routes {
    /// Some pruned block may keep cells (`zpb` below the block size).
    partial_possible: bool,
    /// The score pass left each pruned block's kept cells in its code byte.
    sel_in_codes: bool,
    /// One-row blocks tiling every row (so block `b` is cells `b·bw ..` of the flat data, whatever
    /// the row width), of a width that tiles 64-bit words, and pruned blocks either zeroed entirely
    /// or carrying their kept cells in their code byte: a word-aligned task's mask words follow
    /// its blocks' codes without regard to where data rows begin.
    word_path: bool,
    /// Whole blocks of several rows whose block rows (narrow rows of a power-of-two width) fit in
    /// one word: each block row's bits are its row pattern repeated, from a few code bits.
    short_block_rows: bool,
    /// Whole blocks of several rows, of a power-of-two width, in rows of whole words: each block
    /// row's bits are its first row's words (from the codes, 64 blocks at a time) repeated.
    word_block_rows: bool,
}

impl Routes {
    fn new(g: &Grid, zpb: usize) -> Routes {
        let partial_possible = zpb < g.bh * g.bw;
        Routes {
            partial_possible,
            sel_in_codes: scores::selection_in_codes(g, zpb),
            word_path: g.bh == 1
                && g.w % g.bw == 0
                && g.bw.is_power_of_two()
                && g.bw <= 64
                && (zpb >= g.bw || (zpb > 0 && g.bw <= 4)),
            short_block_rows: g.bh > 1
                && !partial_possible
                && g.w % g.bw == 0
                && g.w.is_power_of_two()
                && g.bw.is_power_of_two()
                && g.w * g.bh <= 64,
            word_block_rows: g.bh > 1
                && !partial_possible
                && g.w % 64 == 0
                && g.bw.is_power_of_two()
                && g.bw <= 64,
        }
    }
}

/// Per-task buffers.
struct Work<P> {
    kept: Vec<u64>,
    pat: Vec<u64>,
    rows: Vec<u64>,
    codes: Vec<u8>,
    cells: CellScratch<P>,
}

impl<P> Default for Work<P> {
    fn default() -> Self {
        Work {
            kept: Vec::new(),
            pat: Vec::new(),
            rows: Vec::new(),
            codes: Vec::new(),
            cells: CellScratch::default(),
        }
    }
}

/// Everything a task of the pass reads.
struct Pass<'a, T: ScoreElem> {
    data: &'a [T],
    g: &'a Grid,
    zpb: usize,
    src: Source<'a, T::Key>,
    routes: Routes,
}

/// Writes the whole mask given which blocks are pruned: task `t` is the run of blocks
/// `ranges[t]` (in block order, the tasks of the plan) and writes the mask bits of its cells.
pub(crate) fn mask_pass<T: ScoreElem, N: NormKind>(
    data: &[T],
    g: &Grid,
    ranges: &[Range<usize>],
    zpb: usize,
    src: Source<'_, T::Key>,
    cut: Option<&Cut<T::Key>>,
    mask: &mut Mask,
) {
    let p = Pass {
        data,
        g,
        zpb,
        src,
        routes: Routes::new(g, zpb),
    };
    let spans = ranges.iter().map(|r| plan::spans(g, r.clone())).collect();
    mask.write_spans(spans, |task, wr| {
        crate::simd::dispatch(MaskTask::<T, N> {
            p: &p,
            blocks: ranges[task].clone(),
            st: CutState::for_task(cut, &p.src, task),
            wr,
            norm: PhantomData,
        })
    });
}

/// One task of [`mask_pass`], compiled for AVX2 where the CPU has it ([`crate::simd::dispatch`]).
struct MaskTask<'a, 'b, 'c, T: ScoreElem, N> {
    p: &'a Pass<'a, T>,
    blocks: Range<usize>,
    st: CutState<'a, T::Key>,
    wr: &'b mut SpanWriter<'c>,
    norm: PhantomData<N>,
}

impl<T: ScoreElem, N: NormKind> crate::simd::Kernel for MaskTask<'_, '_, '_, T, N> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let MaskTask {
            p,
            blocks,
            mut st,
            wr,
            ..
        } = self;
        if p.whole_task::<N>(blocks.clone(), &mut st, wr) {
            return;
        }
        let mut work = Work::default();
        for (br, bcs) in plan::pieces(p.g, blocks) {
            p.piece::<N>(br, bcs, &mut st, &mut work, wr);
        }
    }
}

impl<T: ScoreElem> Pass<'_, T> {
    /// The word-at-a-time routes, for a whole task at once where the grid and the task's alignment
    /// allow; returns whether the task is written.
    #[inline(always)]
    fn whole_task<N: NormKind>(
        &self,
        blocks: Range<usize>,
        st: &mut CutState<'_, T::Key>,
        wr: &mut SpanWriter<'_>,
    ) -> bool {
        let (g, r) = (self.g, &self.routes);
        let (b0, b1) = (blocks.start, blocks.end);
        // The routes write the task's words in place (`aligned_words`), not in a closure, which
        // the compiler kept out of line, away from the CPU features of `simd::dispatch`.
        if r.word_path {
            let (bw, zpb) = (g.bw, self.zpb);
            let coded = matches!(self.src, Source::Coded(..));
            if !(coded || zpb >= bw || bw <= 4) {
                return false;
            }
            let Some(out) = wr.aligned_words() else {
                return false;
            };
            match &self.src {
                // Each mask word comes straight from the code bytes of the `64 / bw` blocks it
                // covers, which may span several data rows (narrow rows).
                Source::Coded(codes, _) => {
                    words::words_from_codes(&codes[b0..b1], bw, r.sel_in_codes, st, out)
                }
                Source::All if zpb >= bw => out.fill(0),
                // N:M with M = 2 or 4: the kept cells of every block, lanes across blocks.
                Source::All => {
                    words::words_all_pruned::<T, N>(&self.data[b0 * bw..b1 * bw], bw, zpb, out)
                }
                Source::Keys(_) => return false,
            }
            wr.close_aligned();
            true
        } else if let (true, Source::Coded(codes, _)) = (r.short_block_rows, &self.src) {
            if b0 % g.nbc != 0 || b1 % g.nbc != 0 {
                return false;
            }
            words::words_from_codes_short(&codes[b0..b1], g, b0 / g.nbc, st, wr);
            true
        } else if let (true, Source::Coded(codes, _)) = (r.word_block_rows, &self.src) {
            if b0 % g.nbc != 0 || b1 % g.nbc != 0 {
                return false;
            }
            let Some(out) = wr.aligned_words() else {
                return false;
            };
            words::words_from_codes_rows(&codes[b0..b1], g, b0 / g.nbc, st, out);
            wr.close_aligned();
            true
        } else {
            false
        }
    }

    /// Writes the bits of blocks `bcs` of block row `br`: each of its data rows' `cw` cells.
    #[inline(always)]
    fn piece<N: NormKind>(
        &self,
        br: usize,
        bcs: Range<usize>,
        st: &mut CutState<'_, T::Key>,
        work: &mut Work<<T::Key as Key>::Packed>,
        wr: &mut SpanWriter<'_>,
    ) {
        let (g, zpb) = (self.g, self.zpb);
        let nb = bcs.len();
        let b0 = br * g.nbc + bcs.start;
        let (c0, c1) = (bcs.start * g.bw, (bcs.end * g.bw).min(g.w));
        let cw = c1 - c0;
        let seg_words = cw.div_ceil(64);
        let rr = g.rows_of(br);
        let nrows = rr.len();
        work.kept.resize(nb.div_ceil(64), 0);
        let kept = &mut work.kept[..nb.div_ceil(64)];
        let n_pruned = match &self.src {
            Source::All => {
                kept.fill(0);
                nb
            }
            Source::Coded(codes, _) => st.flags(&codes[b0..b0 + nb], kept),
            Source::Keys(keys) => {
                let thr = st.thr;
                work.codes.clear();
                work.codes.extend(
                    keys[b0..b0 + nb]
                        .iter()
                        .map(|&k| scores::code_of(k, thr, thr)),
                );
                st.flags(&work.codes, kept)
            }
        };
        if n_pruned == 0 {
            for _ in 0..nrows {
                wr.push_fill(true, cw);
            }
            return;
        }
        // Whether some pruned block keeps cells: one with more real cells than zpb (the widest
        // block of the piece has nrows * min(bw, cw) cells).
        let whole = !(self.routes.partial_possible && zpb < nrows * g.bw.min(cw));
        if n_pruned == nb && whole {
            for _ in 0..nrows {
                wr.push_fill(false, cw);
            }
            return;
        }
        work.pat.resize(seg_words, 0);
        let pat = &mut work.pat[..seg_words];
        row_pattern(kept, &Grid::new(nrows, cw, g.bh, g.bw), pat);
        if whole {
            for _ in 0..nrows {
                wr.push_words(pat, cw);
            }
            return;
        }
        // Some pruned blocks keep their largest cells: add those to the rows' bits.
        let (data, cells) = (self.data, &mut work.cells);
        if g.bh == 1 && g.w % g.bw == 0 {
            // One row of whole blocks: patch the pattern in place.
            let row = &data[rr.start * g.w + c0..rr.start * g.w + c1];
            match (&self.src, g.bw) {
                (Source::Coded(codes, _), _) if self.routes.sel_in_codes => {
                    // The score pass left each block's kept cells in its code byte.
                    let cs = &codes[b0..b0 + nb];
                    for_each_zero(kept, nb, |bc| {
                        or_bits(pat, bc * g.bw, (cs[bc] >> 3) as u64, g.bw as u32);
                    });
                }
                (_, 2) => keep_row::<T, N, 2>(row, kept, nb, zpb, pat),
                (_, 3) => keep_row::<T, N, 3>(row, kept, nb, zpb, pat),
                (_, 4) => keep_row::<T, N, 4>(row, kept, nb, zpb, pat),
                (_, 8) => keep_row::<T, N, 8>(row, kept, nb, zpb, pat),
                (_, 16) => keep_row::<T, N, 16>(row, kept, nb, zpb, pat),
                _ => {
                    let mut out = RowBits {
                        rows: pat,
                        row_words: seg_words,
                        c0,
                    };
                    for_each_zero(kept, nb, |bc| {
                        keep_cells::<T, N>(data, g, (br, bcs.start + bc), zpb, &mut out, cells)
                    });
                    wr.push_words(out.rows, cw);
                    return;
                }
            }
            wr.push_words(pat, cw);
            return;
        }
        let need = nrows * seg_words;
        if work.rows.len() < need {
            work.rows.resize(need, 0);
        }
        let rows = &mut work.rows[..need];
        for r in rows.chunks_mut(seg_words) {
            r.copy_from_slice(pat);
        }
        let mut out = RowBits {
            rows,
            row_words: seg_words,
            c0,
        };
        for_each_zero(kept, nb, |bc| {
            let bc = bcs.start + bc;
            if zpb < nrows * g.cols_of(bc).len() {
                keep_cells::<T, N>(data, g, (br, bc), zpb, &mut out, cells);
            }
        });
        for r in out.rows.chunks(seg_words) {
            wr.push_words(r, cw);
        }
    }
}
