//! `Magnitude`: zero every element whose magnitude is below a threshold (the custom sparsifier of
//! PyTorch's README, as a registered rule: `sparsify run --rule magnitude --set threshold=0.1`).
//!
//! An element `x` is zeroed when `|x| < threshold`; NaN is never below a threshold, so NaN cells
//! are kept (and so are infinities). Works on data of any rank.
//!
//! ```
//! use data_sparsifier::rule::{Magnitude, MagnitudeConfig};
//! use data_sparsifier::{DataSparsifier, Tensor};
//! let mut sp = DataSparsifier::new(Magnitude, MagnitudeConfig { threshold: 0.5 }).unwrap();
//! sp.add_data("x", Tensor::from_vec(vec![0.1f32, -0.7, f32::NAN, 2.0], [2, 2]).unwrap()).unwrap();
//! sp.step().unwrap();
//! assert_eq!(sp.get_mask("x").unwrap().to_dense_u8(), vec![0, 1, 1, 1]);
//! ```

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::mask::Mask;
use crate::rule::{Field, FieldKind, Rule, Schema, TypedRule};
use crate::sparsifier::{Config, UpdateMask};
use crate::tensor::TensorView;

/// The magnitude rule: zero `|x| < threshold`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Magnitude;

/// The per-data config of [`Magnitude`].
///
/// ```
/// use data_sparsifier::rule::MagnitudeConfig;
/// assert_eq!(MagnitudeConfig::default().threshold, 0.0);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MagnitudeConfig {
    /// Elements with `|x|` below this are zeroed; finite and at least 0. Default 0 (keeps all).
    pub threshold: f64,
}

impl Config for MagnitudeConfig {
    type Patch = Option<f64>;
    fn apply(&mut self, patch: &Option<f64>) {
        if let Some(t) = *patch {
            self.threshold = t;
        }
    }
}

impl UpdateMask for Magnitude {
    type Config = MagnitudeConfig;
    type State = ();

    fn name(&self) -> &str {
        "MagnitudeSparsifier"
    }
    fn supports_nd(&self) -> bool {
        true
    }
    fn schema(&self) -> Option<Schema> {
        Some(Schema::new(vec![Field::new(
            "threshold",
            FieldKind::Float {
                min: 0.0,
                max: f64::MAX,
            },
            0.0,
            "Zero every element with |x| below this [default: 0]",
        )]))
    }
    fn describe(&self, config: &MagnitudeConfig) -> String {
        format!("|x| < {}", config.threshold)
    }
    fn validate(&self, name: &str, c: &MagnitudeConfig) -> Result<()> {
        if c.threshold.is_finite() && c.threshold >= 0.0 {
            Ok(())
        } else {
            Err(Error::invalid_config(
                name,
                "threshold",
                c.threshold,
                "expected a finite threshold of at least 0",
            ))
        }
    }
    fn update_mask(
        &self,
        _name: &str,
        data: TensorView<'_>,
        c: &MagnitudeConfig,
        _state: &mut (),
        mask: &mut Mask,
    ) -> Result<()> {
        // NaN is never below the threshold: kept.
        mask.keep_where(&data, |x| x.is_nan() || x.abs() >= c.threshold)
    }
}

/// The registry's `magnitude` rule.
pub(crate) fn rule() -> Box<dyn Rule> {
    Box::new(TypedRule::new(
        "magnitude",
        Magnitude,
        MagnitudeConfig::default(),
    ))
}
