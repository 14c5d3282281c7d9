//! Task planning: how the blocks are split into parallel tasks, and which bits of the mask each
//! task writes.
//!
//! Mask layout reminder: cell `(r, c)` of an `h × w` matrix is bit `(r·w + c) % 64` of word
//! `(r·w + c) / 64`. Tasks are runs of consecutive blocks in row-major block order:
//!
//! * usually whole block rows ([`Plan::Rows`]); a task's rows then start on a word boundary
//!   (`r·w % 64 == 0`) and on a block-row boundary, so a task owns one run of whole mask words;
//! * when one block row holds more than a task's worth of cells (1-D data, fewer rows than `bh`,
//!   very wide rows), runs of block columns within a block row ([`Plan::Cols`]). A task then writes
//!   one row segment per data row; the few words two segments share are assembled by the mask
//!   after the parallel pass ([`Mask::write_spans`](crate::mask::Mask::write_spans)).

use std::ops::Range;

use super::scores::Grid;

/// Target cells per parallel task.
pub(crate) const TASK_CELLS: usize = 1 << 17;

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
pub(crate) enum Plan {
    /// Tasks of `brs` whole block rows, whose data rows fill whole mask words.
    Rows { brs: usize },
    /// When one block row holds more cells than a task should: each block row is split into
    /// `per_br` tasks of `bcs` block columns (the last one shorter), `bcs · bw` a multiple of 64.
    Cols { bcs: usize, per_br: usize },
}

impl Plan {
    /// The plan for tasks of about `task_cells` cells.
    pub(crate) fn new(g: &Grid, task_cells: usize) -> Plan {
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
        Plan::Rows { brs: rows / g.bh }
    }

    /// The blocks of every task (row-major block indices), in task order.
    pub(crate) fn ranges(&self, g: &Grid) -> Vec<Range<usize>> {
        let nb = g.num_blocks();
        match *self {
            Plan::Rows { brs } => {
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

/// The pieces of a run of blocks that lie in one block row each: `(block row, block columns)`.
pub(crate) fn pieces(
    g: &Grid,
    blocks: Range<usize>,
) -> impl Iterator<Item = (usize, Range<usize>)> {
    let nbc = g.nbc.max(1);
    let mut b = blocks.start;
    std::iter::from_fn(move || {
        (b < blocks.end).then(|| {
            let (br, bc0) = (b / nbc, b % nbc);
            let bc1 = (blocks.end - br * nbc).min(nbc);
            b = br * nbc + bc1;
            (br, bc0..bc1)
        })
    })
}

/// The mask bits the task of `blocks` writes, in the order the mask pass writes them: for each
/// block-row piece, its data rows' segments (consecutive segments merged: a run of whole block
/// rows is one span).
pub(crate) fn spans(g: &Grid, blocks: Range<usize>) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut push = |s: usize, e: usize| match out.last_mut() {
        Some(last) if last.end == s => last.end = e,
        _ => out.push(s..e),
    };
    let nbc = g.nbc.max(1);
    let mut b = blocks.start;
    while b < blocks.end {
        let br = b / nbc;
        if b % nbc == 0 && blocks.end >= (br + 1) * nbc {
            // A run of whole block rows is one span (no loop over its rows: tasks of narrow rows
            // hold thousands of them).
            let br1 = blocks.end / nbc;
            push(g.rows_of(br).start * g.w, g.rows_of(br1 - 1).end * g.w);
            b = br1 * nbc;
            continue;
        }
        let bc1 = (blocks.end - br * nbc).min(nbc);
        let (c0, c1) = ((b % nbc) * g.bw, (bc1 * g.bw).min(g.w));
        for r in g.rows_of(br) {
            push(r * g.w + c0, r * g.w + c1);
        }
        b = br * nbc + bc1;
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

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
            let Plan::Rows { brs } = p else {
                panic!("{h}x{w}: {p:?}")
            };
            let rows = brs * bh;
            assert!(rows > 0);
            assert_eq!(rows * w % 64, 0);
            let ranges = p.ranges(&g);
            check_ranges(&g, &ranges);
            // One span per task, starting on a word.
            for r in ranges {
                let s = spans(&g, r);
                assert_eq!(s.len(), 1);
                assert_eq!(s[0].start % 64, 0);
            }
        }
    }

    /// Task ranges: consecutive, non-empty, covering every block in order; their spans cover the
    /// mask exactly once.
    fn check_ranges(g: &Grid, ranges: &[Range<usize>]) {
        assert_eq!(ranges.first().map(|r| r.start), Some(0));
        assert_eq!(ranges.last().map(|r| r.end), Some(g.num_blocks()));
        assert!(ranges.windows(2).all(|p| p[0].end == p[1].start));
        assert!(ranges.iter().all(|r| !r.is_empty()));
        let mut all: Vec<Range<usize>> = ranges.iter().flat_map(|r| spans(g, r.clone())).collect();
        all.sort_by_key(|r| r.start);
        assert_eq!(all.first().map(|r| r.start), Some(0));
        assert!(all.windows(2).all(|p| p[0].end == p[1].start));
        assert_eq!(all.last().map(|r| r.end), Some(g.h * g.w));
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
                assert_eq!(spans(&g, r.clone()).len(), g.rows_of(r.start / g.nbc).len());
            }
        }
        // A block row that fits a task keeps the row plan.
        let g = Grid::new(1, 100_000, 1, 4);
        assert!(matches!(Plan::new(&g, TASK_CELLS), Plan::Rows { .. }));
    }

    #[test]
    fn pieces_split_runs_at_block_rows() {
        let g = Grid::new(10, 10, 2, 3); // 5 x 4 blocks
        let p: Vec<_> = pieces(&g, 2..11).collect();
        assert_eq!(p, vec![(0, 2..4), (1, 0..4), (2, 0..3)]);
        assert_eq!(spans(&g, 4..8), vec![20..40]);
        assert_eq!(spans(&g, 9..10), vec![43..46, 53..56]);
        // Block row 0 from block column 2, block rows 1 and 2 whole, block 0 of block row 3.
        assert_eq!(spans(&g, 2..13), vec![6..10, 16..63, 70..73]);
    }
}
