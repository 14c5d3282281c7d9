//! PyTorch's `nn.EmbeddingBag` for candle, built from differentiable candle ops.

use candle_core::{DType as CDType, Tensor as CTensor};

use crate::embedding::{bag_ranges, check_index, normalize_padding, BagMode, Bags};
use crate::error::{Error, Result};

const MODULE: &str = "EmbeddingBag";

fn lookup_err(message: String) -> Error {
    Error::InvalidLookup {
        module: MODULE,
        message,
    }
}

/// A table that reduces bags of rows, like `torch.nn.EmbeddingBag`, for candle models.
///
/// The same semantics as the crate's own [`EmbeddingBag`](crate::EmbeddingBag): `sum` and `mean`
/// modes; bags given by `offsets` (with `include_last_offset`) or fixed-size ([`Bags`]);
/// `per_sample_weights` (a 1-D candle tensor, one weight per index, of any dtype: it is converted
/// to the reduction dtype, `f32` for `f16`/`bf16` tables) only in `sum` mode; entries
/// equal to `padding_idx` are skipped (and not counted by `mean`); an empty bag gives zeros.
/// `max` mode is not supported (an error).
///
/// The forward pass is `index_select` of the rows, an optional multiplication by the per-sample
/// weights, and a segment sum with `index_add` into a `[num_bags, dim]` zero tensor (then a division
/// by the bag sizes for `mean`). Every op has a gradient in candle, so the weight (a `Var`) and the
/// per-sample weights train. `f16`/`bf16` tables are reduced in `f32` and the result cast back
/// (candle's `index_add` would accumulate in half precision).
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use data_sparsifier::candle::EmbeddingBag;
/// use data_sparsifier::{embedding::BagMode, embedding::Bags};
///
/// let w = Var::from_vec(vec![1f32, 1., 2., 2., 4., 4.], (3, 2), &Device::Cpu).unwrap();
/// let bag = EmbeddingBag::new(w.as_tensor().clone(), BagMode::Mean).unwrap();
/// let bags = Bags::Offsets { offsets: &[0, 2, 3], include_last_offset: false };
/// let out = bag.forward(&[0, 1, 2], bags, None).unwrap();
/// assert_eq!(out.to_vec2::<f32>().unwrap(), vec![vec![1.5, 1.5], vec![4., 4.], vec![0., 0.]]);
/// // Gradients flow to the table: d(sum of outputs)/dw.
/// let grads = out.sum_all().unwrap().backward().unwrap();
/// let g = grads.get(&w).unwrap().to_vec2::<f32>().unwrap();
/// assert_eq!(g, vec![vec![0.5, 0.5], vec![0.5, 0.5], vec![1., 1.]]);
/// ```
#[derive(Debug, Clone)]
pub struct EmbeddingBag {
    weight: CTensor,
    mode: BagMode,
    padding_idx: Option<usize>,
}

impl EmbeddingBag {
    /// A bag over a `(num_embeddings, embedding_dim)` weight (shared, e.g. a `Var`'s tensor).
    pub fn new(weight: CTensor, mode: BagMode) -> Result<Self> {
        if weight.rank() != 2 {
            return Err(lookup_err(format!(
                "weight must be 2-D (num_embeddings, embedding_dim), got shape {:?}",
                weight.dims()
            )));
        }
        if mode == BagMode::Max {
            return Err(lookup_err(
                "max mode is not supported by the candle EmbeddingBag; use sum or mean".into(),
            ));
        }
        super::dtype_from_candle(weight.dtype())?;
        Ok(EmbeddingBag {
            weight,
            mode,
            padding_idx: None,
        })
    }

    /// A bag whose weight is created (N(0, 1), as `nn.EmbeddingBag`) or fetched as `weight` in `vb`.
    pub fn from_var_builder(
        num_embeddings: usize,
        embedding_dim: usize,
        mode: BagMode,
        vb: candle_nn::VarBuilder,
    ) -> Result<Self> {
        let w = vb.get_with_hints(
            (num_embeddings, embedding_dim),
            "weight",
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )?;
        Self::new(w, mode)
    }

    /// Skips entries equal to `padding_idx` (negative counts from the end). The row itself is not
    /// modified.
    pub fn with_padding_idx(mut self, padding_idx: i64) -> Result<Self> {
        let n = self.weight.dims()[0];
        self.padding_idx = normalize_padding(MODULE, Some(padding_idx), n)?;
        Ok(self)
    }

    /// The weight (sharing the storage).
    pub fn weight(&self) -> &CTensor {
        &self.weight
    }
    /// The reduction mode.
    pub fn mode(&self) -> BagMode {
        self.mode
    }
    /// The padding row, if any.
    pub fn padding_idx(&self) -> Option<usize> {
        self.padding_idx
    }

    /// Reduces each bag; the output is `[num_bags, embedding_dim]` in the weight's dtype, on its
    /// device.
    pub fn forward(
        &self,
        indices: &[i64],
        bags: Bags<'_>,
        per_sample_weights: Option<&CTensor>,
    ) -> Result<CTensor> {
        let (n, d) = (self.weight.dims()[0], self.weight.dims()[1]);
        let device = self.weight.device();
        if let Some(psw) = per_sample_weights {
            if self.mode != BagMode::Sum {
                return Err(lookup_err(format!(
                    "per_sample_weights are only supported in sum mode, not {:?}",
                    self.mode
                )));
            }
            if psw.dims() != [indices.len()] {
                return Err(lookup_err(format!(
                    "per_sample_weights must be 1-D with one weight per index ({}), got shape {:?}",
                    indices.len(),
                    psw.dims()
                )));
            }
        }
        let rows: Vec<usize> = indices
            .iter()
            .enumerate()
            .map(|(pos, &i)| check_index(MODULE, i, pos, n))
            .collect::<Result<_>>()?;
        let ranges = bag_ranges(indices.len(), bags)?;
        let nbags = ranges.len();

        // The entries that count: (row, bag, position in `indices`).
        let mut kept_rows = Vec::with_capacity(rows.len());
        let mut kept_bags = Vec::with_capacity(rows.len());
        let mut kept_pos = Vec::with_capacity(rows.len());
        let mut counts = vec![0u32; nbags];
        for (b, &(s, e)) in ranges.iter().enumerate() {
            for (j, &r) in rows.iter().enumerate().take(e).skip(s) {
                if Some(r) == self.padding_idx {
                    continue;
                }
                kept_rows.push(r as u32);
                kept_bags.push(b as u32);
                kept_pos.push(j as u32);
                counts[b] += 1;
            }
        }

        let wdtype = self.weight.dtype();
        let cdtype = match wdtype {
            CDType::F16 | CDType::BF16 => CDType::F32,
            other => other,
        };
        let out = CTensor::zeros((nbags, d), cdtype, device)?;
        if kept_rows.is_empty() {
            return Ok(out.to_dtype(wdtype)?);
        }
        let k = kept_rows.len();
        let ids = CTensor::from_vec(kept_rows, k, device)?;
        let mut gathered = self.weight.index_select(&ids, 0)?.to_dtype(cdtype)?;
        if let Some(psw) = per_sample_weights {
            let psw = if k == indices.len() {
                psw.clone()
            } else {
                psw.index_select(&CTensor::from_vec(kept_pos, k, device)?, 0)?
            };
            gathered = gathered.broadcast_mul(&psw.to_dtype(cdtype)?.unsqueeze(1)?)?;
        }
        let bag_ids = CTensor::from_vec(kept_bags, k, device)?;
        let mut out = out.index_add(&bag_ids, &gathered, 0)?;
        if self.mode == BagMode::Mean {
            // Divide by the exact bag sizes (an empty bag is all zeros; divide it by 1).
            let sizes: Vec<f64> = counts.iter().map(|&c| c.max(1) as f64).collect();
            let sizes = CTensor::from_vec(sizes, (nbags, 1), device)?.to_dtype(cdtype)?;
            out = out.broadcast_div(&sizes)?;
        }
        Ok(out.to_dtype(wdtype)?)
    }
}
