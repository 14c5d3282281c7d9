//! Usage example 1: a custom threshold sparsifier on a tensor and a parameter.
//!
//! The PyTorch README's first example, in Rust: implement the mask rule (`UpdateMask`), add a
//! 100x100 tensor with its own threshold and a 200x32 parameter with the default one, `step`, then
//! `squash_mask`, after which the caller's parameter handle holds the sparse values.
//!
//! Run: `cargo run -p data-sparsifier --example custom_sparsifier`

use data_sparsifier::random::randn;
use data_sparsifier::{
    AddOptions, Config, DType, DataSparsifier, Mask, Parameter, Result, SquashOptions, TensorView,
    UpdateMask, Version,
};
use serde::{Deserialize, Serialize};

/// Zeroes every element with `|x| < threshold`.
struct ThresholdSparsifier;

/// The per-name config: just the threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Threshold {
    threshold: f64,
}

/// Per-name overrides (PyTorch's `add_data(..., threshold=0.5)` keyword).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct ThresholdPatch {
    threshold: Option<f64>,
}

impl Config for Threshold {
    type Patch = ThresholdPatch;
    fn apply(&mut self, p: &ThresholdPatch) {
        if let Some(t) = p.threshold {
            self.threshold = t;
        }
    }
}

impl UpdateMask for ThresholdSparsifier {
    type Config = Threshold;
    type State = ();

    fn name(&self) -> &'static str {
        "ThresholdSparsifier"
    }
    fn update_mask(
        &self,
        _name: &str,
        data: TensorView<'_>,
        config: &Threshold,
        _state: &mut (),
        mask: &mut Mask,
    ) -> Result<()> {
        mask.keep_where(&data, |x| x.abs() >= config.threshold)
    }
}

fn count_below(values: &[f64], threshold: f64) -> usize {
    values.iter().filter(|x| x.abs() < threshold).count()
}

fn main() -> Result<()> {
    let tensor1 = randn([100, 100], DType::F32, 1);
    let param1 = Parameter::new(randn([200, 32], DType::F32, 2));
    let tensor_values = tensor1.to_f64_vec();
    let param_values = param1.snapshot().to_f64_vec();

    // Default threshold 0.2; tensor1 gets its own, 0.5.
    let mut sparsifier = DataSparsifier::new(ThresholdSparsifier, Threshold { threshold: 0.2 })?;
    sparsifier.add_data_with(
        "tensor1",
        tensor1,
        AddOptions::patched(ThresholdPatch {
            threshold: Some(0.5),
        }),
    )?;
    sparsifier.add_data("param1", &param1)?;
    println!("{sparsifier}");

    sparsifier.step()?;
    for (name, values, threshold) in [
        ("tensor1", &tensor_values, 0.5),
        ("param1", &param_values, 0.2),
    ] {
        let mask = sparsifier.get_mask(name)?;
        println!(
            "{name}: threshold {threshold}, {} of {} elements masked ({:.1}%)",
            mask.count_zeroed(),
            mask.len(),
            100.0 * mask.sparsity()
        );
        assert_eq!(mask.count_zeroed(), count_below(values, threshold));
        assert_eq!(sparsifier.config(name)?.threshold, threshold);
    }
    // Before the squash the parameter is untouched; the masked version is a view.
    assert_eq!(param1.snapshot().to_f64_vec(), param_values);
    let masked = sparsifier.get_data("param1", Version::Masked)?;

    sparsifier.squash_mask(None, SquashOptions::default())?;
    // The caller's own handle now holds mask · data; the original is gone, as in PyTorch.
    let squashed = param1.snapshot();
    assert_eq!(squashed, masked);
    assert_eq!(
        squashed.to_f64_vec().iter().filter(|&&x| x == 0.0).count(),
        count_below(&param_values, 0.2)
    );
    assert!(sparsifier.get_data("param1", Version::Original).is_err());
    println!(
        "after squash_mask: param1 has {:.1}% zeros (through the caller's own Parameter handle)",
        100.0 * squashed.zero_fraction()
    );
    println!("ok");
    Ok(())
}
