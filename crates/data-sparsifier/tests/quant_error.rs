//! Our int8 rowwise quantization over the kept cells has a lower max and mean absolute error than
//! PyTorch's `post_training_sparse_quantize` on the golden tables, and its pruned cells are exactly
//! 0 (the figures of `docs/quantization.md`, printed by `examples/quant_error.rs`).

#[allow(dead_code)]
#[path = "../examples/quant_error.rs"]
mod example;

use data_sparsifier::quant::RowCodec;

#[test]
fn ours_int8_beats_pytorchs_8_bit_on_the_golden_tables() {
    let (pytorch, ours) = example::measure();
    assert_eq!(pytorch.cells, ours[0].1.cells);
    assert!(pytorch.cells > 10_000, "{} cells", pytorch.cells);
    let int8 = ours.iter().find(|(c, _)| *c == RowCodec::Int8).unwrap().1;
    assert!(
        int8.max < pytorch.max,
        "max: ours {} vs PyTorch {}",
        int8.max,
        pytorch.max
    );
    assert!(
        int8.mean() < pytorch.mean(),
        "mean: ours {} vs PyTorch {}",
        int8.mean(),
        pytorch.mean()
    );
    for (codec, s) in &ours {
        assert_eq!(
            s.pruned_exact, s.pruned,
            "{codec}: every pruned cell is exactly 0"
        );
    }
    assert!(pytorch.pruned_exact < pytorch.pruned);
}
