//! The error of quantized sparse tables on the golden cases: PyTorch's `post_training_sparse_quantize`
//! (8-bit per row, its range including the pruned zeros) against ours (int8 / int4 / int2 per row
//! over the kept cells only, pruned cells exactly 0), both measured against the float masked table
//! `weight * mask` of the 127 sparsify-first cases (254 tables, 2 per case).
//!
//! ```text
//! cargo run --release -p data-sparsifier --example quant_error
//! ```
//!
//! `tests/quant_error.rs` runs [`measure`] and asserts that our int8 is below PyTorch's in both max
//! and mean absolute error.

#[path = "../tests/common/golden.rs"]
mod golden;
#[path = "../tests/common/quant.rs"]
mod quant;

use data_sparsifier::quant::{MaskedRowwiseTable, RowCodec};
use data_sparsifier::{Mask, Tensor};

/// Absolute errors pooled over every cell of every table.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorStats {
    /// The largest |quantized − float|.
    pub max: f64,
    /// The sum of |quantized − float|.
    pub sum: f64,
    /// Cells counted.
    pub cells: usize,
    /// The largest |quantized − float| over kept cells.
    pub max_kept: f64,
    /// Pruned cells, and those that decode to exactly 0.
    pub pruned: usize,
    /// Pruned cells decoding to exactly 0.
    pub pruned_exact: usize,
    /// Bytes of codes plus per-row parameters (the mask not counted).
    pub bytes: usize,
    /// Tables counted.
    pub tables: usize,
}

impl ErrorStats {
    /// The mean absolute error.
    pub fn mean(&self) -> f64 {
        self.sum / self.cells.max(1) as f64
    }
    fn add(&mut self, got: &[f32], want: &[f32], mask: &[u8]) {
        for ((&g, &w), &m) in got.iter().zip(want).zip(mask) {
            let e = (f64::from(g) - f64::from(w)).abs();
            self.max = self.max.max(e);
            self.sum += e;
            self.cells += 1;
            if m == 0 {
                self.pruned += 1;
                self.pruned_exact += usize::from(g == 0.0);
            } else {
                self.max_kept = self.max_kept.max(e);
            }
        }
    }
}

/// The errors: PyTorch's, then ours for int8, int4, int2.
pub fn measure() -> (ErrorStats, Vec<(RowCodec, ErrorStats)>) {
    let mut pytorch = ErrorStats::default();
    let mut ours: Vec<(RowCodec, ErrorStats)> = RowCodec::ALL
        .iter()
        .map(|&c| (c, ErrorStats::default()))
        .collect();
    for path in quant::case_paths() {
        let case = quant::load(&path);
        if !case.sparsify_first {
            continue; // no mask in the file: the float masked table is not known
        }
        for t in [&case.emb, &case.bag] {
            let mask = t.mask.as_ref().expect("sparsify-first cases have masks");
            let w = t.weight.as_slice::<f32>().expect("f32 weights");
            let target: Vec<f32> = w
                .iter()
                .zip(mask)
                .map(|(&x, &m)| x * f32::from(m))
                .collect();
            pytorch.add(&t.dequant, &target, mask);
            pytorch.tables += 1;
            let rows = t.weight.shape()[0];
            pytorch.bytes += RowCodec::Int8.bytes_per_row(t.weight.shape()[1]) * rows;
            let m = Mask::from_dense_u8(t.weight.shape().to_vec(), mask).expect("mask shape");
            for (codec, stats) in &mut ours {
                let q = MaskedRowwiseTable::encode(*codec, "table", &t.weight, Some(&m))
                    .expect("finite golden tables");
                let d: Tensor = q.dequantize();
                stats.add(d.as_slice::<f32>().expect("f32"), &target, mask);
                stats.bytes += q.nbytes();
            }
        }
    }
    (pytorch, ours)
}

fn main() {
    let (pytorch, ours) = measure();
    println!(
        "{} cells of {} sparsify-first golden tables, error against weight * mask:",
        pytorch.cells, pytorch.tables
    );
    println!(
        "| quantization | max abs error | mean abs error | max over kept cells | pruned cells exactly 0 | code + parameter bytes |"
    );
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, s: &ErrorStats| {
        println!(
            "| {name} | {:.3e} | {:.3e} | {:.3e} | {} of {} ({:.1}%) | {} |",
            s.max,
            s.mean(),
            s.max_kept,
            s.pruned_exact,
            s.pruned,
            100.0 * s.pruned_exact as f64 / s.pruned.max(1) as f64,
            s.bytes
        )
    };
    row("PyTorch quint8 (range incl. zeros)", &pytorch);
    for (codec, s) in &ours {
        row(&format!("ours {codec} (kept cells)"), s);
    }
    let int8 = &ours[0].1;
    println!(
        "ours int8 / PyTorch: max {:.3}x, mean {:.3}x",
        int8.max / pytorch.max,
        int8.mean() / pytorch.mean()
    );
}
