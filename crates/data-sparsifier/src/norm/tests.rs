//! The kernel's internal paths against the golden PyTorch cases and the naive oracle. The size
//! thresholds ([`Knobs`]) are shrunk so that small data takes the sampled fast path (`small = 0`)
//! and splits into many row or column tasks (`task_cells`); large cases use the real thresholds.
//! Every run reports its [`Route`], so each test checks that it reached the path it is about.

use proptest::prelude::*;

use super::config::{DataNormConfig, NanPolicy, Norm};
use super::kernel::{self, Knobs, Route};
use super::plan;
use super::scores::{ScoreElem, L1, L2};
use super::scratch::Scratch;
use super::{pruned_block_count, select};
use crate::{DType, Mask, Tensor};

#[path = "../../tests/common/golden.rs"]
mod golden;
#[path = "../../tests/common/oracle.rs"]
mod oracle;

use oracle::oracle;

/// Cells per task of the real kernel.
const TASK_CELLS: usize = Knobs::DEFAULT.task_cells;

fn run_typed<T: ScoreElem>(
    data: &[T],
    (h, w): (usize, usize),
    c: &DataNormConfig,
    mask: &mut Mask,
    knobs: Knobs,
) -> Route {
    match c.norm {
        Norm::L1 => {
            kernel::run_norm::<T, L1>("t", data, (h, w), c, mask, &mut Scratch::new(), knobs)
        }
        Norm::L2 => {
            kernel::run_norm::<T, L2>("t", data, (h, w), c, mask, &mut Scratch::new(), knobs)
        }
    }
    .unwrap()
}

/// The mask of `t` through the kernel with `knobs` (starting from a mask of garbage), and the
/// route taken.
fn run_with(t: &Tensor, c: &DataNormConfig, knobs: Knobs) -> (Vec<u8>, Route) {
    let hw = t.view().rows_cols().unwrap();
    let mut m = Mask::zeros(t.shape().to_vec());
    for i in (0..m.len()).step_by(3) {
        m.set(i, true);
    }
    let route = crate::with_dtype!(t.dtype(), T => run_typed::<T>(t.as_slice::<T>().unwrap(), hw, c, &mut m, knobs));
    (m.to_dense_u8(), route)
}

fn knobs(small: usize, task_cells: usize) -> Knobs {
    Knobs { small, task_cells }
}

fn cfg(sl: f64, block: (usize, usize), zpb: Option<usize>, norm: Norm) -> DataNormConfig {
    DataNormConfig {
        sparsity_level: sl,
        sparse_block_shape: block,
        zeros_per_block: zpb,
        norm,
        nan_policy: NanPolicy::RankLast,
    }
}

/// A deterministic pseudo-random sequence (splitmix64).
pub(super) fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `n` values with heavy ties: integers in `-levels/2 .. levels/2` (signed zeros included).
fn tied(n: usize, levels: u64, seed: u64) -> Vec<f64> {
    let mut r = rng(seed);
    (0..n)
        .map(|_| {
            let v = r();
            let x = (v % levels) as f64 - (levels / 2) as f64;
            if x == 0.0 && v & (1 << 40) != 0 {
                -0.0
            } else {
                x
            }
        })
        .collect()
}

// -------------------------------------------------------------------------------------------------
// G1: the golden cases through the fast path and through many tasks
// -------------------------------------------------------------------------------------------------

#[test]
fn golden_cases_conform_through_every_path() {
    let paths = golden::case_paths();
    assert_eq!(paths.len(), 300);
    let cases: Vec<golden::Case> = paths.iter().map(|p| golden::load(p)).collect();
    let mut failures = Vec::new();
    let mut routes = std::collections::BTreeMap::new();
    let mut column_tasks = 0;
    for case in &cases {
        for (small, task_cells) in [(0, TASK_CELLS), (0, 64), (0, 1), (usize::MAX, 1)] {
            let (got, route) = run_with(&case.data, &case.config, knobs(small, task_cells));
            *routes.entry(format!("{route:?}")).or_insert(0usize) += 1;
            let how = format!("small={small} task_cells={task_cells} {route:?}");
            golden::check(case, &got, &how, &mut failures);
            let hw = case.data.view().rows_cols().unwrap();
            let (tasks, cols) =
                plan::task_layout(hw.0, hw.1, case.config.sparse_block_shape, task_cells);
            column_tasks += (cols && tasks > 1 && route == Route::Fast) as usize;
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("golden cases by route: {routes:?}; fast path with column tasks: {column_tasks}");
    // Every case that needs a selection (the exact route when not forced) took the fast path in
    // each of the three forced runs: the sampled interval never missed on these cases.
    let count = |r: &str| routes.get(r).copied().unwrap_or(0);
    assert!(count("Exact") >= 100, "{routes:?}");
    assert_eq!(count("Fast"), 3 * count("Exact"), "{routes:?}");
    assert!(column_tasks >= 100, "{column_tasks}");
}

// -------------------------------------------------------------------------------------------------
// G1: property tests at multi-task sizes against the oracle
// -------------------------------------------------------------------------------------------------

/// Values of one kind: continuous, small integers (ties), special values, or wide magnitudes.
fn values(n: usize, kind: u8, seed: u64) -> Vec<f64> {
    let mut r = rng(seed);
    (0..n)
        .map(|_| {
            let v = r();
            match kind {
                0 => (v >> 11) as f64 / (1u64 << 53) as f64 * 6.0 - 3.0,
                1 => (v % 5) as f64 - 2.0,
                2 => [
                    0.0,
                    -0.0,
                    1.0,
                    -1.0,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    0.5,
                    2.0,
                ][(v % 8) as usize],
                _ => {
                    let e = (v % 40) as i32 - 20;
                    let x = 2f64.powi(e) * 1.3;
                    if v & (1 << 50) != 0 {
                        -x
                    } else {
                        x
                    }
                }
            }
        })
        .collect()
}

fn dtype_strategy() -> impl Strategy<Value = DType> {
    prop_oneof![
        Just(DType::F32),
        Just(DType::F64),
        Just(DType::F16),
        Just(DType::BF16)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Small data split into many tiny tasks (row or column runs), on the fast path and on the
    /// exact path, against the oracle.
    #[test]
    fn many_tiny_tasks_match_the_oracle(
        h in prop_oneof![Just(1usize), 1usize..30],
        w in prop_oneof![1usize..200, Just(64usize), Just(128), Just(192)],
        one_d in any::<bool>(),
        bh in 1usize..5,
        bw in prop_oneof![1usize..7, Just(8usize), Just(16)],
        zpb in prop_oneof![Just(None), (0usize..=80).prop_map(Some)],
        sl in prop_oneof![Just(0.5f64), Just(1.0), 0.0f64..=1.0],
        l2 in any::<bool>(),
        dtype in dtype_strategy(),
        kind in 0u8..4,
        nan_every in prop_oneof![Just(0usize), 5usize..60],
        seed in any::<u64>(),
        small in prop_oneof![Just(0usize), Just(usize::MAX)],
        task_cells in prop_oneof![Just(1usize), Just(8), Just(64), Just(500), Just(4096)],
    ) {
        let mut v = values(h * w, kind, seed);
        if nan_every > 0 {
            for x in v.iter_mut().skip(seed as usize % nan_every).step_by(nan_every) {
                *x = f64::NAN;
            }
        }
        let shape = if one_d && h == 1 { vec![w] } else { vec![h, w] };
        let t = Tensor::from_f64s(&v, dtype, shape).unwrap();
        let c = cfg(sl, (bh, bw), zpb.map(|z| z % (bh * bw + 1)), if l2 { Norm::L2 } else { Norm::L1 });
        let (got, _) = run_with(&t, &c, knobs(small, task_cells));
        prop_assert_eq!(got, oracle(&t, &c));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// Several real tasks (3 to 5 times `TASK_CELLS`) with the real thresholds: one block row
    /// (1-D data, or fewer rows than `bh`) split into column runs, or a few wide block rows.
    #[test]
    fn multi_task_sizes_match_the_oracle(
        layout in 0u8..3,
        tasks in 3usize..6,
        bw in prop_oneof![1usize..6, Just(8usize)],
        partial in any::<bool>(),
        zf in 0.0f64..1.0,
        sl in prop_oneof![Just(0.5f64), 0.05f64..0.95],
        l2 in any::<bool>(),
        dtype in dtype_strategy(),
        levels in prop_oneof![Just(3u64), Just(9), Just(1000)],
        seed in any::<u64>(),
    ) {
        let n = tasks * TASK_CELLS + 37;
        let (shape, bh): (Vec<usize>, usize) = match layout {
            0 => (vec![n], 1),
            1 => (vec![3, n / 3], 4),
            _ => (vec![4, n / 4], 2),
        };
        let cells: usize = shape.iter().product();
        let t = Tensor::from_f64s(&tied(cells, levels, seed), dtype, shape.clone()).unwrap();
        // zeros per block 1 ..= cells - 1, or whole blocks.
        let zpb = partial.then(|| 1 + (zf * (bh * bw - 1) as f64) as usize).filter(|&z| z < bh * bw);
        let c = cfg(sl, (bh, bw), zpb, if l2 { Norm::L2 } else { Norm::L1 });
        let (h, w) = t.view().rows_cols().unwrap();
        let (ntasks, cols) = plan::task_layout(h, w, (bh, bw), TASK_CELLS);
        prop_assert!(cols && ntasks >= 3, "{:?}: {} tasks", shape, ntasks);
        let (got, route) = run_with(&t, &c, Knobs::DEFAULT);
        prop_assert_eq!(got, oracle(&t, &c), "{:?} {:?} {:?}", shape, c, route);
    }
}

// -------------------------------------------------------------------------------------------------
// G2: within-block selections stored in the code byte, at full size
// -------------------------------------------------------------------------------------------------

#[test]
fn one_row_blocks_with_partial_zeroing_on_the_fast_path() {
    // (1,3), (1,4), (1,5) blocks with 1 ..= bw-1 zeros: more blocks than the direct-selection
    // limit, rows of whole blocks, so the score pass stores each block's kept cells in its code.
    for (shape, dtype, levels) in [
        (vec![300usize, 600usize], DType::F32, 3u64),
        (vec![180_000], DType::F32, 40),
        (vec![300, 600], DType::BF16, 40),
    ] {
        let cells: usize = shape.iter().product();
        let t = Tensor::from_f64s(&tied(cells, levels, levels), dtype, shape.clone()).unwrap();
        for bw in [3usize, 4, 5] {
            assert!(cells / bw > select::SMALL);
            for zpb in 1..bw {
                for (sl, norm) in [(0.3, Norm::L1), (0.7, Norm::L2)] {
                    let c = cfg(sl, (1, bw), Some(zpb), norm);
                    let (got, route) = run_with(&t, &c, Knobs::DEFAULT);
                    assert_eq!(route, Route::Fast, "{shape:?} {c:?}");
                    assert_eq!(got, oracle(&t, &c), "{shape:?} {dtype} {levels} {c:?}");
                }
            }
        }
    }
}

// -------------------------------------------------------------------------------------------------
// G2b: narrow rows (one-row blocks tiling rows narrower than, or not a multiple of, 64 cells),
// whose mask words are written straight from the block codes across data rows
// -------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Rows of `m` whole blocks of a power-of-two width (16 cells of (1,4) blocks, 8, 48, ...),
    /// one or several rows per block (block rows of at most 64 cells among them), many small
    /// tasks on the fast path, against the oracle.
    #[test]
    fn narrow_rows_of_whole_blocks_match_the_oracle(
        h in 1usize..300,
        bh in prop_oneof![Just(1usize), 2usize..9],
        bw in prop_oneof![Just(1usize), Just(2), Just(4), Just(8), Just(16), Just(32), Just(64)],
        m in prop_oneof![1usize..7, Just(8), Just(16)],
        zf in prop_oneof![Just(None), (0.0f64..1.0).prop_map(Some)],
        sl in prop_oneof![Just(0.5f64), Just(1.0), 0.0f64..=1.0],
        l2 in any::<bool>(),
        dtype in dtype_strategy(),
        kind in 0u8..4,
        nan_every in prop_oneof![Just(0usize), 5usize..60],
        seed in any::<u64>(),
        task_cells in prop_oneof![Just(1usize), Just(64), Just(500), Just(4096), Just(TASK_CELLS)],
    ) {
        let w = bw * m;
        let mut v = values(h * w, kind, seed);
        if nan_every > 0 {
            for x in v.iter_mut().skip(seed as usize % nan_every).step_by(nan_every) {
                *x = f64::NAN;
            }
        }
        let t = Tensor::from_f64s(&v, dtype, [h, w]).unwrap();
        // Whole blocks, or 1 ..= bw - 1 zeros per block.
        let zpb = zf.map(|f| 1 + (f * (bw.max(2) - 1) as f64) as usize).filter(|&z| z < bw);
        let c = cfg(sl, (bh, bw), zpb, if l2 { Norm::L2 } else { Norm::L1 });
        let (got, _) = run_with(&t, &c, knobs(0, task_cells));
        prop_assert_eq!(got, oracle(&t, &c), "{}x{} {:?}", h, w, c);
    }
}

#[test]
fn narrow_tables_on_the_fast_path_at_full_size() {
    // Several real tasks of narrow rows (16 cells: the DLRM embedding width), heavy ties.
    for (shape, dtype, levels) in [
        ([40_000usize, 16usize], DType::F32, 7u64),
        ([40_000, 16], DType::BF16, 1000),
        ([70_001, 8], DType::F32, 1000),
        ([20_000, 48], DType::F16, 9),
    ] {
        let cells = shape[0] * shape[1];
        let t = Tensor::from_f64s(&tied(cells, levels, levels + 1), dtype, shape).unwrap();
        let (ntasks, cols) = plan::task_layout(shape[0], shape[1], (1, 4), TASK_CELLS);
        assert!(!cols && ntasks >= 3, "{shape:?}: {ntasks} tasks");
        for (block, zpb) in [
            ((1, 4), None),
            ((1, 4), Some(2)),
            ((1, 2), Some(1)),
            ((1, 8), None),
            ((4, 4), None),
            ((2, 8), None),
            ((4, 4), Some(5)),
        ] {
            for (sl, norm) in [(0.5, Norm::L1), (0.8, Norm::L2), (0.3, Norm::L2)] {
                let c = cfg(sl, block, zpb, norm);
                let (got, route) = run_with(&t, &c, Knobs::DEFAULT);
                assert!(matches!(route, Route::Fast | Route::Fallback), "{route:?}");
                assert_eq!(
                    got,
                    oracle(&t, &c),
                    "{shape:?} {dtype} {levels} {c:?} {route:?}"
                );
            }
        }
    }
}

#[test]
fn n_m_sparsity_word_at_a_time_at_full_size() {
    // Level 1 (every block pruned, no scores): (1,2) and (1,4) blocks keep their largest cells,
    // written a mask word at a time across rows; heavy ties, signed zeros, infinities and NaN.
    let mut r = rng(11);
    let pick = [
        0.0,
        -0.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1.0,
        -1.0,
        3.0,
        f64::NAN,
    ];
    for (shape, dtype) in [
        ([40_000usize, 16usize], DType::F32),
        ([10_000, 64], DType::BF16),
        ([70_001, 8], DType::F64),
        ([3, 100_004], DType::F16),
    ] {
        let cells = shape[0] * shape[1];
        let v: Vec<f64> = (0..cells).map(|_| pick[(r() % 8) as usize]).collect();
        let t = Tensor::from_f64s(&v, dtype, shape).unwrap();
        for (bw, zpb) in [(2, 1), (4, 1), (4, 2), (4, 3), (4, 4), (8, 8)] {
            for norm in [Norm::L1, Norm::L2] {
                let c = cfg(1.0, (1, bw), Some(zpb), norm);
                let (got, route) = run_with(&t, &c, Knobs::DEFAULT);
                assert_eq!(route, Route::PruneAll);
                assert_eq!(got, oracle(&t, &c), "{shape:?} {dtype} {c:?}");
                let (got, _) = run_with(&t, &c, knobs(0, 4096));
                assert_eq!(got, oracle(&t, &c), "{shape:?} {dtype} {c:?} small tasks");
            }
        }
    }
}

// -------------------------------------------------------------------------------------------------
// G3: the sampled interval misses
// -------------------------------------------------------------------------------------------------

/// Data whose sampled blocks (the fast path's deterministic sample) hold `at_sample(j)` (`j`: the
/// block's place in the sample) in every cell, and whose other cells hold `other(i)`.
fn with_sample(
    (h, w): (usize, usize),
    (bh, bw): (usize, usize),
    at_sample: impl Fn(usize) -> f64,
    other: impl Fn(usize) -> f64,
) -> Vec<f64> {
    let (nbr, nbc) = (h.div_ceil(bh), w.div_ceil(bw));
    let mut sampled = vec![None; nbr * nbc];
    for (j, b) in select::sample_positions(nbr * nbc).into_iter().enumerate() {
        sampled[b] = Some(j);
    }
    (0..h * w)
        .map(|i| match sampled[(i / w / bh) * nbc + (i % w) / bw] {
            Some(j) => at_sample(j),
            None => other(i),
        })
        .collect()
}

#[test]
fn a_missed_sample_falls_back_to_the_radix_select() {
    let (h, w) = (400, 500);
    let mut r = rng(5);
    let others: Vec<f64> = (0..h * w)
        .map(|_| 1.0 + (r() % 980) as f64 / 10.0)
        .collect();
    for (block, zpb) in [((1, 1), None), ((2, 2), Some(3)), ((1, 4), Some(2))] {
        // 1. Every sampled block is 0 and every other block larger: the interval is [0, 0] and
        //    holds fewer than k blocks.
        let below = with_sample((h, w), block, |_| 0.0, |i| others[i]);
        // 2. Sampled blocks half 0, half 100, the others in between: at level 0.5 the interval is
        //    [0, 100], with far more blocks inside than its cap.
        let spread = with_sample(
            (h, w),
            block,
            |j| if j % 2 == 0 { 0.0 } else { 100.0 },
            |i| others[i],
        );
        for (data, dtype, levels) in [
            (&below, DType::F32, &[0.5, 0.9][..]),
            (&spread, DType::F32, &[0.5][..]),
            (&spread, DType::F16, &[0.5][..]),
        ] {
            let t = Tensor::from_f64s(data, dtype, [h, w]).unwrap();
            for &sl in levels {
                let c = cfg(sl, block, zpb, Norm::L1);
                let want = oracle(&t, &c);
                let (got, route) = run_with(&t, &c, Knobs::DEFAULT);
                assert_eq!(route, Route::Fallback, "{block:?} {sl} {dtype}");
                assert_eq!(got, want, "{block:?} {sl} {dtype}");
                // And with column tasks.
                let (got, route) = run_with(&t, &c, knobs(select::SMALL, 300));
                assert_eq!(route, Route::Fallback);
                assert_eq!(got, want, "{block:?} {sl} {dtype} column tasks");
            }
        }
    }
}

// -------------------------------------------------------------------------------------------------
// G4: signed zeros, infinities and NaN at full size
// -------------------------------------------------------------------------------------------------

#[test]
fn signed_zeros_infinities_and_nan_on_the_fast_path() {
    // Mostly ±0 and ±inf (ties between signs, and between +inf and -inf), some numbers and NaN.
    let mut r = rng(9);
    let pick = [0.0, -0.0, f64::INFINITY, f64::NEG_INFINITY, 1.0, -1.0, 3.0];
    for (shape, dtype) in [
        (vec![200usize, 700usize], DType::F32),
        (vec![200, 700], DType::F64),
        (vec![140_000], DType::F32),
        (vec![200, 700], DType::BF16),
    ] {
        let cells: usize = shape.iter().product();
        let v: Vec<f64> = (0..cells)
            .map(|i| {
                if i % 997 == 5 {
                    f64::NAN
                } else {
                    pick[(r() % 7) as usize]
                }
            })
            .collect();
        let t = Tensor::from_f64s(&v, dtype, shape.clone()).unwrap();
        for (block, zpb) in [((1, 1), None), ((1, 4), Some(3)), ((2, 3), Some(4))] {
            for sl in [0.2, 0.6, 0.95] {
                let c = cfg(sl, block, zpb, Norm::L2);
                let want = oracle(&t, &c);
                let (got, route) = run_with(&t, &c, knobs(0, TASK_CELLS));
                assert!(matches!(route, Route::Fast | Route::Fallback), "{route:?}");
                assert_eq!(got, want, "{shape:?} {dtype} {c:?}");
                let (got, route) = run_with(&t, &c, knobs(0, 4096));
                assert!(matches!(route, Route::Fast | Route::Fallback), "{route:?}");
                assert_eq!(got, want, "{shape:?} {dtype} {c:?} small tasks");
            }
        }
    }
}

#[test]
fn pruned_counts_hold_with_column_tasks() {
    // A sanity check of the oracle-free invariant on 1-D data split into many column tasks.
    let t = Tensor::from_f64s(&tied(300_001, 2, 3), DType::F32, [300_001]).unwrap();
    let c = cfg(0.5, (1, 3), None, Norm::L1);
    let (got, route) = run_with(&t, &c, Knobs::DEFAULT);
    assert_eq!(route, Route::Fast);
    let nb = 300_001usize.div_ceil(3);
    let k = pruned_block_count(0.5, nb);
    let zeros = got.iter().filter(|&&b| b == 0).count();
    // Every pruned block is whole; the last block (2 cells) may be one of them.
    assert!(zeros == 3 * k || zeros == 3 * k - 1, "{zeros} {k}");
}
