//! The naive DataNorm oracle: PyTorch's block scores, then a full stable sort (NaN last, ties by
//! index) for blocks and for cells. Shared by the integration tests (`mod common`) and the
//! crate's unit tests (`#[path]`), which reach the crate as `data_sparsifier` either way.
#![allow(dead_code)]

use data_sparsifier::norm::{pruned_block_count, DataNormConfig, Norm};
use data_sparsifier::{Element, Tensor};

/// A naive model of the algorithm: block scores with PyTorch's accumulation rule, then a full
/// stable sort (NaN last, ties by index), for blocks and for cells.
pub fn oracle_typed<T: Element>(x: &[T], h: usize, w: usize, c: &DataNormConfig) -> Vec<u8> {
    let (bh, bw) = c.sparse_block_shape;
    let zpb = c.zeros_per_block_effective();
    // Cell value in the data type: |x| or x*x rounded to T.
    let cell = |v: T| -> T {
        match c.norm {
            Norm::L1 => T::from_f64(v.to_f64().abs()),
            Norm::L2 => T::from_acc(v.to_acc() * v.to_acc()),
        }
    };
    let (nbr, nbc) = (h.div_ceil(bh), w.div_ceil(bw));
    let mut scores = Vec::new();
    for br in 0..nbr {
        for bc in 0..nbc {
            let mut s = T::acc_zero();
            let mut n = 0;
            for r in br * bh..((br + 1) * bh).min(h) {
                for col in bc * bw..((bc + 1) * bw).min(w) {
                    s = s + cell(x[r * w + col]).to_acc();
                    n += 1;
                }
            }
            scores.push(T::from_acc(s / T::acc_from_usize(n)).to_f64());
        }
    }
    let k = pruned_block_count(c.sparsity_level, nbr * nbc);
    let mut order: Vec<usize> = (0..scores.len()).collect();
    let key = |v: f64| (v.is_nan(), if v.is_nan() { 0.0 } else { v });
    order.sort_by(|&a, &b| key(scores[a]).partial_cmp(&key(scores[b])).unwrap());
    let mut mask = vec![1u8; h * w];
    for &b in &order[..k] {
        let (br, bc) = (b / nbc, b % nbc);
        let mut cells: Vec<(usize, f64)> = Vec::new();
        for r in br * bh..((br + 1) * bh).min(h) {
            for col in bc * bw..((bc + 1) * bw).min(w) {
                cells.push((r * w + col, cell(x[r * w + col]).to_f64()));
            }
        }
        cells.sort_by(|a, b| key(a.1).partial_cmp(&key(b.1)).unwrap());
        for &(i, _) in cells.iter().take(zpb) {
            mask[i] = 0;
        }
    }
    mask
}

pub fn oracle(data: &Tensor, c: &DataNormConfig) -> Vec<u8> {
    let (h, w) = match data.shape() {
        [] => (1, 1),
        [n] => (1, *n),
        [a, b] => (*a, *b),
        s => panic!("shape {s:?}"),
    };
    data_sparsifier::with_dtype!(data.dtype(), T => oracle_typed::<T>(data.as_slice::<T>().unwrap(), h, w, c))
}
