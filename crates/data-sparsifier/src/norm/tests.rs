//! The kernel's internal paths against the naive oracle. The size thresholds ([`Knobs`]) are shrunk
//! so that small data takes the sampled fast path (`small = 0`) and splits into many row or column
//! tasks (`task_cells`); large cases use the real thresholds.

use proptest::prelude::*;

use super::config::{DataNormConfig, NanPolicy, Norm};
use super::kernel::{self, Knobs, Route};
use super::pruned_block_count;
use super::scores::{ScoreElem, L1, L2};
use crate::{DType, Mask, Tensor};

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
        Norm::L1 => kernel::run_norm::<T, L1>("t", data, h, w, c, mask, knobs),
        Norm::L2 => kernel::run_norm::<T, L2>("t", data, h, w, c, mask, knobs),
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
fn rng(seed: u64) -> impl FnMut() -> u64 {
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
// Property tests at multi-task sizes against the oracle
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
        let (ntasks, cols) = kernel::task_layout(h, w, (bh, bw), TASK_CELLS);
        prop_assert!(cols && ntasks >= 3, "{:?}: {} tasks", shape, ntasks);
        let (got, route) = run_with(&t, &c, Knobs::DEFAULT);
        prop_assert_eq!(got, oracle(&t, &c), "{:?} {:?} {:?}", shape, c, route);
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
