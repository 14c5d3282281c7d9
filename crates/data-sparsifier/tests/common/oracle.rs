//! The naive DataNorm oracle: PyTorch's block scores, then a full stable sort (NaN last, ties by
//! index) for blocks and for cells. Shared by the integration tests (`mod common`) and the
//! crate's unit tests (`#[path]`), which reach the crate as `data_sparsifier` either way.
#![allow(dead_code)]

use data_sparsifier::norm::{pruned_block_count, DataNormConfig, Norm};
use data_sparsifier::{Element, Tensor};

/// A cell's value in the data type under the config's norm: `|x|`, or `x*x` rounded to `T`.
fn cell_value<T: Element>(v: T, c: &DataNormConfig) -> T {
    match c.norm {
        Norm::L1 => T::from_f64(v.to_f64().abs()),
        Norm::L2 => T::from_acc(v.to_acc() * v.to_acc()),
    }
}

/// NaN-last sort key of a score.
fn nan_last(v: f64) -> (bool, f64) {
    (v.is_nan(), if v.is_nan() { 0.0 } else { v })
}

/// Block scores, row-major, with PyTorch's accumulation rule (sum in the accumulator from 0,
/// divide by the real cells, round to `T`), as f64.
pub fn block_scores<T: Element>(x: &[T], h: usize, w: usize, c: &DataNormConfig) -> Vec<f64> {
    let (bh, bw) = c.sparse_block_shape;
    let (nbr, nbc) = (h.div_ceil(bh), w.div_ceil(bw));
    let mut scores = Vec::new();
    for br in 0..nbr {
        for bc in 0..nbc {
            let mut s = T::acc_zero();
            let mut n = 0;
            for r in br * bh..((br + 1) * bh).min(h) {
                for col in bc * bw..((bc + 1) * bw).min(w) {
                    s = s + cell_value(x[r * w + col], c).to_acc();
                    n += 1;
                }
            }
            scores.push(T::from_acc(s / T::acc_from_usize(n)).to_f64());
        }
    }
    scores
}

/// The mask when the blocks `pruned` (row-major block indices) are pruned: in each, the
/// `zeros_per_block` smallest cells (NaN last, ties by index) are zeroed.
pub fn mask_of_pruned<T: Element>(
    x: &[T],
    h: usize,
    w: usize,
    c: &DataNormConfig,
    pruned: &[usize],
) -> Vec<u8> {
    let (bh, bw) = c.sparse_block_shape;
    let nbc = w.div_ceil(bw);
    let zpb = c.zeros_per_block_effective();
    let mut mask = vec![1u8; h * w];
    for &b in pruned {
        let (br, bc) = (b / nbc, b % nbc);
        let mut cells: Vec<(usize, f64)> = Vec::new();
        for r in br * bh..((br + 1) * bh).min(h) {
            for col in bc * bw..((bc + 1) * bw).min(w) {
                cells.push((r * w + col, cell_value(x[r * w + col], c).to_f64()));
            }
        }
        cells.sort_by(|a, b| nan_last(a.1).partial_cmp(&nan_last(b.1)).unwrap());
        for &(i, _) in cells.iter().take(zpb) {
            mask[i] = 0;
        }
    }
    mask
}

/// A naive model of the algorithm: block scores with PyTorch's accumulation rule, then a full
/// stable sort (NaN last, ties by index), for blocks and for cells.
pub fn oracle_typed<T: Element>(x: &[T], h: usize, w: usize, c: &DataNormConfig) -> Vec<u8> {
    let scores = block_scores(x, h, w, c);
    let k = pruned_block_count(c.sparsity_level, scores.len());
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| {
        nan_last(scores[a])
            .partial_cmp(&nan_last(scores[b]))
            .unwrap()
    });
    mask_of_pruned(x, h, w, c, &order[..k])
}

/// `(rows, cols)` of a tensor of 0, 1 or 2 dims.
pub fn rows_cols(data: &Tensor) -> (usize, usize) {
    match data.shape() {
        [] => (1, 1),
        [n] => (1, *n),
        [a, b] => (*a, *b),
        s => panic!("shape {s:?}"),
    }
}

pub fn oracle(data: &Tensor, c: &DataNormConfig) -> Vec<u8> {
    let (h, w) = rows_cols(data);
    data_sparsifier::with_dtype!(data.dtype(), T => oracle_typed::<T>(data.as_slice::<T>().unwrap(), h, w, c))
}
