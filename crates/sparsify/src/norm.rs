//! TEMPORARY stand-in for `data_sparsifier::norm` (being written on branch `norm`), following its
//! fixed public contract so the CLI builds and its tests run before that branch is merged. Once
//! `norm` is merged, this file becomes `pub use data_sparsifier::norm::*;`.
#![allow(missing_docs)]

use std::fmt;
use std::str::FromStr;

use data_sparsifier::{Config, Element, Error, Mask, Result, TensorView, UpdateMask};
use serde::{Deserialize, Serialize};

/// The block norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Norm {
    #[default]
    L1,
    L2,
}

impl FromStr for Norm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "l1" | "L1" => Ok(Norm::L1),
            "l2" | "L2" => Ok(Norm::L2),
            _ => Err(Error::invalid_config("norm", "norm", s, "L1 or L2")),
        }
    }
}

impl fmt::Display for Norm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Norm::L1 => "L1",
            Norm::L2 => "L2",
        })
    }
}

/// What to do with NaN in the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NanPolicy {
    #[default]
    Error,
    RankLast,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataNormConfig {
    pub sparsity_level: f64,
    pub sparse_block_shape: (usize, usize),
    pub zeros_per_block: Option<usize>,
    pub norm: Norm,
    pub nan_policy: NanPolicy,
}

impl Default for DataNormConfig {
    fn default() -> Self {
        DataNormConfig {
            sparsity_level: 0.5,
            sparse_block_shape: (1, 4),
            zeros_per_block: None,
            norm: Norm::L1,
            nan_policy: NanPolicy::Error,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataNormPatch {
    pub sparsity_level: Option<f64>,
    pub sparse_block_shape: Option<(usize, usize)>,
    pub zeros_per_block: Option<usize>,
    pub norm: Option<Norm>,
    pub nan_policy: Option<NanPolicy>,
}

impl Config for DataNormConfig {
    type Patch = DataNormPatch;
    fn apply(&mut self, p: &DataNormPatch) {
        if let Some(v) = p.sparsity_level {
            self.sparsity_level = v;
        }
        if let Some(v) = p.sparse_block_shape {
            self.sparse_block_shape = v;
        }
        if let Some(v) = p.zeros_per_block {
            self.zeros_per_block = Some(v);
        }
        if let Some(v) = p.norm {
            self.norm = v;
        }
        if let Some(v) = p.nan_policy {
            self.nan_policy = v;
        }
    }
}

impl DataNormConfig {
    pub fn validate(&self, name: &str) -> Result<()> {
        if !(0.0..=1.0).contains(&self.sparsity_level) {
            return Err(Error::invalid_config(
                name,
                "sparsity_level",
                self.sparsity_level,
                "a number in [0, 1]",
            ));
        }
        let (h, w) = self.sparse_block_shape;
        if h == 0 || w == 0 {
            return Err(Error::invalid_config(
                name,
                "sparse_block_shape",
                format!("({h}, {w})"),
                "both block dimensions must be at least 1",
            ));
        }
        if let Some(z) = self.zeros_per_block {
            if z > h * w {
                return Err(Error::invalid_config(
                    name,
                    "zeros_per_block",
                    z,
                    format!("at most the block size {}", h * w),
                ));
            }
        }
        Ok(())
    }
    pub fn zeros_per_block_effective(&self) -> usize {
        let (h, w) = self.sparse_block_shape;
        self.zeros_per_block.unwrap_or(h * w)
    }
}

pub struct DataNorm;
pub type DataNormSparsifier = data_sparsifier::DataSparsifier<DataNorm>;

impl UpdateMask for DataNorm {
    type Config = DataNormConfig;
    type State = ();
    fn name(&self) -> &'static str {
        "DataNormSparsifier"
    }
    fn validate(&self, name: &str, config: &DataNormConfig) -> Result<()> {
        config.validate(name)
    }
    fn update_mask(
        &self,
        name: &str,
        data: TensorView<'_>,
        config: &DataNormConfig,
        _state: &mut (),
        mask: &mut Mask,
    ) -> Result<()> {
        compute_mask(name, data, config, mask)
    }
}

pub fn compute_mask(
    name: &str,
    data: TensorView<'_>,
    config: &DataNormConfig,
    mask: &mut Mask,
) -> Result<()> {
    config.validate(name)?;
    mask.check_shape(name, data.shape())?;
    let (rows, cols) = data.rows_cols().ok_or_else(|| Error::UnsupportedShape {
        name: name.to_string(),
        shape: data.shape().to_vec(),
    })?;
    if config.nan_policy == NanPolicy::Error {
        if let Some(index) = data.first_nan() {
            return Err(Error::NanInData {
                name: name.to_string(),
                index,
                row: index / cols.max(1),
                col: index % cols.max(1),
            });
        }
    }
    let (bh, bw) = config.sparse_block_shape;
    let area = bh * bw;
    let zpb = config.zeros_per_block_effective();
    mask.fill(true);
    if config.sparsity_level <= 0.0 || zpb == 0 || rows * cols == 0 {
        return Ok(());
    }
    if config.sparsity_level >= 1.0 && zpb == area {
        mask.fill(false);
        return Ok(());
    }
    let values: Vec<f64> = data_sparsifier::with_dtype!(data.dtype(), T => {
        let s = data.as_slice::<T>().unwrap_or_default();
        s.iter().map(|x| { let v = x.to_f64(); match config.norm { Norm::L1 => v.abs(), Norm::L2 => v * v } }).collect()
    });
    let (br, bc) = (rows.div_ceil(bh), cols.div_ceil(bw));
    let nb = br * bc;
    let mut scores = vec![0.0f64; nb];
    for (b, s) in scores.iter_mut().enumerate() {
        let (r0, c0) = ((b / bc) * bh, (b % bc) * bw);
        let (mut sum, mut n) = (0.0, 0usize);
        for r in r0..(r0 + bh).min(rows) {
            for c in c0..(c0 + bw).min(cols) {
                sum += values[r * cols + c];
                n += 1;
            }
        }
        *s = sum / n as f64;
    }
    let k = ((config.sparsity_level * nb as f64).round() as usize).min(nb);
    let mut order: Vec<usize> = (0..nb).collect();
    let key = |x: f64| if x.is_nan() { f64::INFINITY } else { x };
    order.sort_by(|&a, &b| key(scores[a]).total_cmp(&key(scores[b])).then(a.cmp(&b)));
    for &b in &order[..k] {
        let (r0, c0) = ((b / bc) * bh, (b % bc) * bw);
        let mut elems: Vec<(f64, usize)> = Vec::with_capacity(area);
        for r in r0..r0 + bh {
            for c in c0..c0 + bw {
                if r < rows && c < cols {
                    elems.push((key(values[r * cols + c]), r * cols + c));
                } else {
                    elems.push((f64::NAN, usize::MAX));
                }
            }
        }
        elems.sort_by(|a, b| a.0.total_cmp(&b.0));
        for &(_, i) in elems.iter().take(zpb) {
            if i != usize::MAX {
                mask.set(i, false);
            }
        }
    }
    Ok(())
}

#[allow(dead_code)]
fn _assert_element<T: Element>() {}
