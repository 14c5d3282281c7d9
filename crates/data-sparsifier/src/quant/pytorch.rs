//! PyTorch's per-row quint8 quantization with float quantization parameters
//! (`per_channel_affine_float_qparams`, axis 0), in PyTorch's exact f32 arithmetic, and the
//! quantized `Embedding` / `EmbeddingBag` lookups over it.
//!
//! Per row, as PyTorch's `PerChannelMinMaxObserver` and `quantize_per_channel` compute it, every
//! operation in f32:
//!
//! * `scale = (max − min) / 255`, replaced by `1` unless `scale > f32::EPSILON`;
//! * `zero_point = (−1 · min) / scale`, a float;
//! * `q = clamp(round_half_even(x · (1 / scale) + zero_point), 0, 255)`, the expression computed
//!   as one fused multiply-add, as PyTorch's AVX2 kernel build does (its compiler contracts it);
//! * `dequantize = (q − zero_point) · scale`.
//!
//! What decides bit equality is the f32 order of the *parameters*: the same formulas with `scale`
//! and `zero_point` computed in f64 and rounded once give other scales, zero points and codes:
//! 1,717 of the conformance test's table checks fail (`tests/quant_conformance.rs`). The rounding of the code
//! expression itself (fused or not) changes no golden cell.
//!
//! The quantized lookups use the packed row form of `embedding_bag_byte_prepack`: per row the
//! codes with `scale` and `bias = (zero_point · scale) · −1`, and FBGEMM's accumulation
//! `out = fma(scale, q, out + bias)`, row after row. So a lookup is close to, but not always
//! bit-equal to, the sum of [`QuantizedTable::dequantize`]'s rows, exactly as in PyTorch.

use rayon::prelude::*;

use super::QuantError;
use crate::dtype::DType;
use crate::embedding::{bag_ranges, check_index, check_per_sample_weights, normalize_padding};
use crate::embedding::{BagMode, Bags};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `(rows, cols)` of a table shape, or [`QuantError::NotATable`].
pub(crate) fn table_dims(name: &str, shape: &[usize]) -> Result<(usize, usize)> {
    match *shape {
        [r, c] => Ok((r, c)),
        _ => Err(QuantError::NotATable {
            name: name.to_string(),
            shape: shape.to_vec(),
        }
        .into()),
    }
}

/// The values of a float tensor as f32 (PyTorch's `.float()`: rounded to nearest).
pub(crate) fn to_f32(t: &Tensor) -> Vec<f32> {
    match t.as_slice::<f32>() {
        Some(s) => s.to_vec(),
        None => t
            .to_dtype(DType::F32)
            .as_slice::<f32>()
            .unwrap_or_default()
            .to_vec(),
    }
}

/// The first non-finite value of a `cols`-wide table, as an error naming its row and column.
fn check_finite(name: &str, values: &[f32], cols: usize) -> Result<()> {
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        return Err(QuantError::NonFinite {
            what: format!("data {name:?} row {} (position = column)", i / cols.max(1)),
            index: i % cols.max(1),
            value: values[i],
        }
        .into());
    }
    Ok(())
}

/// PyTorch's float qparams of one row: `(scale, zero_point)`.
fn float_qparams(row: &[f32]) -> (f32, f32) {
    if row.is_empty() {
        // PyTorch's aminmax refuses an empty row; an empty table has no rows to ask.
        return (1.0, 0.0);
    }
    let (mut min, mut max) = (row[0], row[0]);
    for &x in &row[1..] {
        min = min.min(x);
        max = max.max(x);
    }
    let scale = (max - min) / 255.0f32;
    let scale = if scale > f32::EPSILON { scale } else { 1.0 };
    (scale, -min / scale) // PyTorch: -1 * min_val / scale; -1 * x is exactly -x
}

/// PyTorch's `quantize_val_float_qparams` for quint8.
#[inline]
fn quantize_val(scale: f32, zero_point: f32, x: f32) -> u8 {
    let inv_scale = if scale == 0.0 { 1.0 } else { 1.0 / scale };
    x.mul_add(inv_scale, zero_point)
        .round_ties_even()
        .clamp(0.0, 255.0) as u8
}

/// A table quantized as PyTorch's `quantize_per_channel(weight, scales, zero_points, axis=0,
/// dtype=torch.quint8)` with float qparams: the codes (`int_repr()`), one f32 scale and one f32
/// zero point per row.
///
/// ```
/// use data_sparsifier::quant::QuantizedTable;
/// use data_sparsifier::Tensor;
/// let w = Tensor::from_vec(vec![-1.0f32, 0.0, 1.0, 2.0, 2.0, 2.0], [2, 3]).unwrap();
/// let q = QuantizedTable::quantize("emb", &w).unwrap();
/// assert_eq!((q.int_repr()[0], q.int_repr()[2]), (0, 255)); // the row's min and max
/// assert_eq!(q.scales()[0], 2.0 / 255.0);
/// assert_eq!((q.scales()[1], q.zero_points()[1]), (1.0, -2.0)); // a constant row: scale 1
/// let d = q.dequantize();
/// assert_eq!(d.as_slice::<f32>().unwrap()[3..], [2.0, 2.0, 2.0]);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedTable {
    rows: usize,
    cols: usize,
    int_repr: Vec<u8>,
    scales: Vec<f32>,
    zero_points: Vec<f32>,
}

impl QuantizedTable {
    /// Observes each row's min and max and quantizes it (PyTorch's
    /// `float_qparams_weight_only_qconfig` followed by `convert`). The table is read as f32
    /// (PyTorch's `weight.float()`). `name` names the data in errors; a NaN or infinity is a
    /// [`QuantError::NonFinite`].
    pub fn quantize(name: &str, table: &Tensor) -> Result<Self> {
        let (rows, cols) = table_dims(name, table.shape())?;
        let values = to_f32(table);
        check_finite(name, &values, cols)?;
        let qparams: Vec<(f32, f32)> = if cols == 0 {
            vec![(1.0, 0.0); rows]
        } else {
            values.par_chunks(cols).map(float_qparams).collect()
        };
        let (scales, zero_points) = qparams.into_iter().unzip();
        Ok(Self::with_qparams(rows, cols, &values, scales, zero_points))
    }

    /// Quantizes with given per-row qparams (PyTorch's `torch.quantize_per_channel` with float
    /// zero points, as `post_training_sparse_quantize` does with `sparsify_first = false`).
    ///
    /// ```
    /// use data_sparsifier::quant::QuantizedTable;
    /// use data_sparsifier::Tensor;
    /// let w = Tensor::from_vec(vec![0.0f32, 0.5, 1.0], [1, 3]).unwrap();
    /// let q = QuantizedTable::quantize_with("w", &w, &[0.5], &[1.0]).unwrap();
    /// assert_eq!(q.int_repr(), &[1, 2, 3]);
    /// assert!(QuantizedTable::quantize_with("w", &w, &[f32::NAN], &[1.0]).is_err());
    /// assert!(QuantizedTable::quantize_with("w", &w, &[0.5, 0.5], &[1.0, 1.0]).is_err());
    /// ```
    pub fn quantize_with(
        name: &str,
        table: &Tensor,
        scales: &[f32],
        zero_points: &[f32],
    ) -> Result<Self> {
        let (rows, cols) = table_dims(name, table.shape())?;
        for (what, v) in [("scales", scales), ("zero_points", zero_points)] {
            if v.len() != rows {
                return Err(Error::ShapeMismatch {
                    what: format!("{what} for quantizing {name:?} (one per row)"),
                    expected: vec![rows],
                    actual: vec![v.len()],
                });
            }
        }
        if let Some(r) = (0..rows).find(|&r| !(scales[r].is_finite() && zero_points[r].is_finite()))
        {
            return Err(QuantError::BadParams {
                what: format!("data {name:?} row {r}"),
                scale: scales[r],
                bias: zero_points[r],
            }
            .into());
        }
        let values = to_f32(table);
        check_finite(name, &values, cols)?;
        Ok(Self::with_qparams(
            rows,
            cols,
            &values,
            scales.to_vec(),
            zero_points.to_vec(),
        ))
    }

    fn with_qparams(
        rows: usize,
        cols: usize,
        values: &[f32],
        scales: Vec<f32>,
        zero_points: Vec<f32>,
    ) -> Self {
        let mut int_repr = vec![0u8; rows * cols];
        if cols > 0 {
            int_repr
                .par_chunks_mut(cols)
                .zip(values.par_chunks(cols))
                .enumerate()
                .for_each(|(r, (q, x))| {
                    for (q, &x) in q.iter_mut().zip(x) {
                        *q = quantize_val(scales[r], zero_points[r], x);
                    }
                });
        }
        QuantizedTable {
            rows,
            cols,
            int_repr,
            scales,
            zero_points,
        }
    }

    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
    /// The codes, row-major (PyTorch's `int_repr()`).
    pub fn int_repr(&self) -> &[u8] {
        &self.int_repr
    }
    /// Per-row scales.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }
    /// Per-row float zero points.
    pub fn zero_points(&self) -> &[f32] {
        &self.zero_points
    }
    /// Per-row scales as f64, as PyTorch's `q_per_channel_scales()` returns them.
    pub fn scales_f64(&self) -> Vec<f64> {
        self.scales.iter().map(|&s| f64::from(s)).collect()
    }
    /// Per-row zero points as f64.
    pub fn zero_points_f64(&self) -> Vec<f64> {
        self.zero_points.iter().map(|&z| f64::from(z)).collect()
    }
    /// The prepacked bias of row `r`: `(zero_point · scale) · −1` (`embedding_bag_byte_prepack`).
    pub fn bias(&self, r: usize) -> f32 {
        -(self.zero_points[r] * self.scales[r]) // PyTorch: zp * scale * -1, exactly this
    }
    /// `torch.dequantize`: `(q − zero_point) · scale` per cell, f32 `[rows, cols]`.
    pub fn dequantize(&self) -> Tensor {
        let mut out = vec![0f32; self.rows * self.cols];
        if self.cols > 0 {
            out.par_chunks_mut(self.cols)
                .zip(self.int_repr.par_chunks(self.cols))
                .enumerate()
                .for_each(|(r, (o, q))| {
                    let (s, z) = (self.scales[r], self.zero_points[r]);
                    for (o, &q) in o.iter_mut().zip(q) {
                        *o = (f32::from(q) - z) * s;
                    }
                });
        }
        Tensor::from_vec(out, [self.rows, self.cols]).expect("rows * cols values")
    }
    /// The table in `embedding_bag_byte_prepack`'s layout: per row the `cols` codes, then the f32
    /// scale and the f32 bias, little-endian (`cols + 8` bytes a row). This is also
    /// [`RowCodec::Int8`](super::RowCodec::Int8)'s fused row layout.
    ///
    /// ```
    /// use data_sparsifier::quant::{QuantizedTable, RowCodec};
    /// use data_sparsifier::Tensor;
    /// let q = QuantizedTable::quantize("w", &Tensor::from_vec(vec![0.0f32, 255.0], [1, 2]).unwrap()).unwrap();
    /// let packed = q.prepack();
    /// assert_eq!(packed.len(), RowCodec::Int8.bytes_per_row(2));
    /// let mut row = [0f32; 2];
    /// RowCodec::Int8.decode_fused_row(&packed, &mut row).unwrap();
    /// assert_eq!(row, [0.0, 255.0]);
    /// ```
    pub fn prepack(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.rows * (self.cols + 8));
        for r in 0..self.rows {
            out.extend_from_slice(&self.int_repr[r * self.cols..(r + 1) * self.cols]);
            out.extend_from_slice(&self.scales[r].to_le_bytes());
            out.extend_from_slice(&self.bias(r).to_le_bytes());
        }
        out
    }

    /// FBGEMM's accumulation of row `r` into `out`, weighted by `w`:
    /// `out = fma(w·scale, q, out + w·bias)`.
    #[inline]
    fn accumulate(&self, r: usize, w: f32, out: &mut [f32]) {
        let scale = w * self.scales[r];
        let bias = w * self.bias(r);
        let q = &self.int_repr[r * self.cols..(r + 1) * self.cols];
        for (o, &q) in out.iter_mut().zip(q) {
            *o = scale.mul_add(f32::from(q), *o + bias);
        }
    }
}

/// A quantized lookup table, like `torch.ao.nn.quantized.Embedding`: `forward` returns each
/// index's row decoded from the packed form, `fma(scale, q, bias)`.
///
/// ```
/// use data_sparsifier::quant::{QuantizedEmbedding, QuantizedTable};
/// use data_sparsifier::Tensor;
/// let w = Tensor::from_vec(vec![0.0f32, 255.0, 510.0, 0.0], [2, 2]).unwrap(); // scales 1 and 2
/// let emb = QuantizedEmbedding::new(QuantizedTable::quantize("emb", &w).unwrap(), None).unwrap();
/// assert_eq!(emb.forward(&[1, 0]).unwrap().as_slice::<f32>().unwrap(), &[510.0, 0.0, 0.0, 255.0]);
/// assert!(emb.forward(&[2]).is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedEmbedding {
    table: QuantizedTable,
    padding_idx: Option<usize>,
}

impl QuantizedEmbedding {
    /// A lookup over `table`; `padding_idx` (negative counts from the end) is kept for the
    /// record, as PyTorch keeps it (the padding row is whatever was quantized).
    pub fn new(table: QuantizedTable, padding_idx: Option<i64>) -> Result<Self> {
        let padding_idx = normalize_padding("quantized Embedding", padding_idx, table.rows)?;
        Ok(QuantizedEmbedding { table, padding_idx })
    }
    /// The quantized table.
    pub fn table(&self) -> &QuantizedTable {
        &self.table
    }
    /// The padding row, if any.
    pub fn padding_idx(&self) -> Option<usize> {
        self.padding_idx
    }
    /// The rows of `indices`, f32 `[indices.len(), cols]`.
    pub fn forward(&self, indices: &[i64]) -> Result<Tensor> {
        let (n, d) = self.table.dims();
        let mut out = vec![0f32; indices.len() * d];
        for (pos, &i) in indices.iter().enumerate() {
            let r = check_index("quantized Embedding", i, pos, n)?;
            let o = &mut out[pos * d..(pos + 1) * d];
            let (scale, bias) = (self.table.scales[r], self.table.bias(r));
            for (o, &q) in o.iter_mut().zip(&self.table.int_repr[r * d..(r + 1) * d]) {
                *o = scale.mul_add(f32::from(q), bias);
            }
        }
        Tensor::from_vec(out, [indices.len(), d])
    }
}

/// A quantized bag table, like `torch.ao.nn.quantized.EmbeddingBag` (PyTorch's
/// `embedding_bag_byte_rowwise_offsets` over the prepacked table).
///
/// * sum: `out = fma(w·scale, q, out + w·bias)` row after row (`w` the per-sample weight, or 1);
/// * mean: the sum times `1 / count` (f32), as FBGEMM normalizes by length;
/// * max (ours; PyTorch's quantized kernel has none): the element-wise max of the decoded rows;
/// * entries equal to `padding_idx` are skipped and not counted; an empty bag gives zeros.
///
/// ```
/// use data_sparsifier::quant::{QuantizedEmbeddingBag, QuantizedTable};
/// use data_sparsifier::embedding::{BagMode, Bags};
/// use data_sparsifier::Tensor;
/// let w = Tensor::from_vec(vec![0.0f32, 255.0, 510.0, 0.0], [2, 2]).unwrap(); // scales 1 and 2
/// let table = QuantizedTable::quantize("bag", &w).unwrap();
/// let bag = QuantizedEmbeddingBag::new(table, BagMode::Sum, None).unwrap();
/// let bags = Bags::Offsets { offsets: &[0, 2, 2], include_last_offset: false };
/// let out = bag.forward(&[0, 1, 1], bags, None).unwrap();
/// assert_eq!(out.as_slice::<f32>().unwrap(), &[510.0, 255.0, 0.0, 0.0, 510.0, 0.0]); // the middle bag is empty
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedEmbeddingBag {
    table: QuantizedTable,
    mode: BagMode,
    padding_idx: Option<usize>,
}

impl QuantizedEmbeddingBag {
    /// A bag table over `table` with `mode`; entries equal to `padding_idx` are skipped.
    pub fn new(table: QuantizedTable, mode: BagMode, padding_idx: Option<i64>) -> Result<Self> {
        let padding_idx = normalize_padding("quantized EmbeddingBag", padding_idx, table.rows)?;
        Ok(QuantizedEmbeddingBag {
            table,
            mode,
            padding_idx,
        })
    }
    /// The quantized table.
    pub fn table(&self) -> &QuantizedTable {
        &self.table
    }
    /// The reduction mode.
    pub fn mode(&self) -> BagMode {
        self.mode
    }
    /// The padding row, if any.
    pub fn padding_idx(&self) -> Option<usize> {
        self.padding_idx
    }
    /// Reduces each bag; f32 `[num_bags, cols]`. Bad indices, offsets or weights are errors.
    pub fn forward(
        &self,
        indices: &[i64],
        bags: Bags<'_>,
        per_sample_weights: Option<&[f64]>,
    ) -> Result<Tensor> {
        const MODULE: &str = "quantized EmbeddingBag";
        let (n, d) = self.table.dims();
        check_per_sample_weights(MODULE, self.mode, per_sample_weights, indices.len())?;
        let rows: Vec<usize> = indices
            .iter()
            .enumerate()
            .map(|(pos, &i)| check_index(MODULE, i, pos, n))
            .collect::<Result<_>>()?;
        let ranges = bag_ranges(indices.len(), bags)?;
        let mut out = vec![0f32; ranges.len() * d];
        let mut row = vec![0f32; d];
        for (b, &(s, e)) in ranges.iter().enumerate() {
            let o = &mut out[b * d..(b + 1) * d];
            let mut count = 0usize;
            for (j, &r) in rows.iter().enumerate().take(e).skip(s) {
                if Some(r) == self.padding_idx {
                    continue;
                }
                match self.mode {
                    BagMode::Sum | BagMode::Mean => {
                        let w = per_sample_weights.map_or(1.0, |p| p[j] as f32);
                        self.table.accumulate(r, w, o);
                    }
                    BagMode::Max => {
                        row.iter_mut().for_each(|x| *x = 0.0);
                        self.table.accumulate(r, 1.0, &mut row);
                        for (o, &x) in o.iter_mut().zip(&row) {
                            if count == 0 || x > *o {
                                *o = x;
                            }
                        }
                    }
                }
                count += 1;
            }
            if self.mode == BagMode::Mean && count > 0 {
                let inv = 1.0 / count as f32;
                o.iter_mut().for_each(|x| *x *= inv);
            }
        }
        Tensor::from_vec(out, [ranges.len(), d])
    }
}
