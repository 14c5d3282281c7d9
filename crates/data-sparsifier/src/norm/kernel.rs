//! The mask kernel: orchestrates the score pass, the selection and the mask pass.
//!
//! The blocks are split into parallel tasks ([`plan`](super::plan)); one fused pass computes the
//! block scores ([`scores`](super::scores)), a linear-time selection finds the threshold
//! ([`select`](super::select)), and one pass over the same tasks writes the mask
//! ([`pass`](super::pass)). Scratch space comes from the caller ([`Scratch`]).

use rayon::prelude::*;

use super::config::{DataNormConfig, NanPolicy, Norm};
use super::pass::{mask_pass, Source};
use super::plan::{Plan, TASK_CELLS};
use super::pruned_block_count;
use super::scores::{self, Grid, NormKind, ScoreElem, L1, L2};
use super::scratch::Scratch;
use super::select;
use crate::error::{Error, Result};
use crate::mask::Mask;

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
    (h, w): (usize, usize),
    config: &DataNormConfig,
    mask: &mut Mask,
    scratch: &mut Scratch,
) -> Result<()> {
    let knobs = Knobs::DEFAULT;
    match config.norm {
        Norm::L1 => run_norm::<T, L1>(name, data, (h, w), config, mask, scratch, knobs),
        Norm::L2 => run_norm::<T, L2>(name, data, (h, w), config, mask, scratch, knobs),
    }
    .map(|_| ())
}

/// [`run`] for one norm, with the size thresholds `knobs`; returns the route taken (tests check it).
pub(crate) fn run_norm<T: ScoreElem, N: NormKind>(
    name: &str,
    data: &[T],
    (h, w): (usize, usize),
    config: &DataNormConfig,
    mask: &mut Mask,
    scratch: &mut Scratch,
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
    let ranges = Plan::new(&g, knobs.task_cells).ranges(&g);
    if k == nb {
        // Every block is pruned (e.g. N:M sparsity): no scores are needed.
        if nan_error_policy && scores::has_nan(data) {
            return Err(nan_error(name, data, w));
        }
        mask_pass::<T, N>(data, &g, &ranges, zpb, Source::All, None, mask);
        return Ok(Route::PruneAll);
    }

    if nb > knobs.small {
        // Fast path: a sampled key interval, one byte per block.
        let pos = select::sample_positions(nb);
        let sample: Vec<T::Key> = pos
            .par_chunks(SAMPLE_CHUNK)
            .flat_map_iter(|ps| {
                // The sampled blocks are far apart (each a cache and TLB miss): start loading
                // the block `SAMPLE_AHEAD` positions ahead while this one is scored.
                let first = |i: usize| (i / g.nbc) * g.bh * g.w + (i % g.nbc) * g.bw;
                ps.iter().enumerate().map(move |(j, &i)| {
                    if let Some(&a) = ps.get(j + SAMPLE_AHEAD) {
                        crate::simd::prefetch(data, first(a));
                    }
                    scores::block_key::<T, N>(data, &g, i / g.nbc, i % g.nbc)
                })
            })
            .collect();
        let b = select::bracket_from_sample(sample, nb, k);
        let codes = scratch.codes(nb);
        let sel = scores::selection_in_codes(&g, zpb).then_some(zpb);
        if let Some(stats) = scores::coded_pass::<T, N>(data, &g, codes, &ranges, b, sel) {
            if nan_error_policy && stats.iter().any(|s| s.nan > 0) {
                return Err(nan_error(name, data, w));
            }
            if let Some(cut) = select::cut_from_stats(&b, &stats, k) {
                let src = Source::Coded(codes, &stats);
                mask_pass::<T, N>(data, &g, &ranges, zpb, src, Some(&cut), mask);
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
    let src = Source::Keys(&keys);
    mask_pass::<T, N>(data, &g, &ranges, zpb, src, Some(&cut), mask);
    Ok(route)
}

/// Sample positions per parallel task of the sample.
const SAMPLE_CHUNK: usize = 1024;
/// How many sample positions ahead the sample prefetches.
const SAMPLE_AHEAD: usize = 16;

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
            let s = &mut Scratch::new();
            match cfg.norm {
                Norm::L1 => run_norm::<T, L1>("t", data, (h, w), cfg, m, s, knobs),
                Norm::L2 => run_norm::<T, L2>("t", data, (h, w), cfg, m, s, knobs),
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
