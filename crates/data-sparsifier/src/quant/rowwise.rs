//! Our rowwise codecs: int8, int4 and int2 codes with a per-row scale and bias, over the kept cells
//! of a row only.
//!
//! # The row codec ([`RowCodec`])
//!
//! `encode_row(values, codes)` quantizes a row's values (for a sparse row: its kept cells, in
//! order) to `bits`-bit codes and returns the row's [`RowParams`]; `decode_row` turns codes back
//! into `code · scale + bias` (one fused multiply-add in f32).
//!
//! * **Range.** `bias` is the row's minimum and `scale = (max − min) / (2^bits − 1)`, both rounded
//!   *outwards* to the parameter type (bias down, scale up: f32 for int8, f16 for int4 / int2), so
//!   every value lies inside `[bias, bias + (2^bits − 1) · scale]`. Codes are
//!   `round_half_even((x − bias) / scale)` computed in f64, so each decoded value is within
//!   **half a step** (`scale / 2`) of its input, plus the f32 rounding of the decoded result.
//!   FBGEMM rounds its f16 scale and bias to nearest, which can push a value past the top code or
//!   below the bias; rounding outwards keeps the half-step bound for every cell.
//! * **Constant rows** (`max == min`) get scale 0 (int8, as FBGEMM's `range / 255`) or 1 (int4 /
//!   int2, FBGEMM's corner case), all codes 0 and bias = the value: decoded exactly.
//! * **Empty rows** (no kept cell) have no codes and parameters `scale = 0, bias = 0`.
//! * **NaN or infinity** is a [`QuantError::NonFinite`]; a row that needs an f16 scale or bias
//!   beyond ±65504 is a [`QuantError::OutOfRange`] for int4 / int2 (use int8).
//!
//! # Layouts
//!
//! * **Codes** are packed little-end first: code `i` sits in byte `i / (8 / bits)` at bit
//!   `(i % (8 / bits)) · bits` (element 0 in the low nibble, as FBGEMM and
//!   `embedding_bag_4bit_prepack`). A row of `n` codes takes [`RowCodec::code_bytes`]`(n)` bytes.
//! * **Parameters** follow as `scale, bias`: two little-endian f32 for int8, two little-endian f16
//!   for int4 / int2 ([`RowCodec::param_bytes`]).
//! * **Fused row** ([`RowCodec::encode_fused_row`], [`RowCodec::bytes_per_row`]): the codes, then
//!   the parameters, which is FBGEMM's fused rowwise layout (`Fused8BitRowwiseQuantizedSBFloat`,
//!   `FusedNBitRowwiseQuantizedSBHalf`; PyTorch's `embedding_bag_byte_prepack` /
//!   `embedding_bag_4bit_prepack` output). A dense quantized table is `rows` fused rows back to back,
//!   which an FBGEMM-style kernel (`out += scale · code + bias`) reads as it is.
//!
//! [`MaskedRowwiseTable`] applies a codec to a whole table under a mask: per row, the kept cells'
//! codes and the row's parameters; pruned cells decode to exactly 0.

use std::fmt;
use std::str::FromStr;

use half::f16;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::QuantError;
use crate::error::Result;
use crate::mask::Mask;
use crate::tensor::Tensor;

/// A rowwise integer code: the bits per cell, with a per-row scale and bias.
///
/// ```
/// use data_sparsifier::quant::RowCodec;
/// assert_eq!(RowCodec::Int4.bits(), 4);
/// assert_eq!(RowCodec::Int4.code_bytes(5), 3); // two codes a byte
/// assert_eq!(RowCodec::Int4.bytes_per_row(64), 32 + 4); // FBGEMM: codes, f16 scale, f16 bias
/// assert_eq!(RowCodec::Int8.bytes_per_row(64), 64 + 8); // codes, f32 scale, f32 bias
/// assert_eq!("int2".parse::<RowCodec>().unwrap(), RowCodec::Int2);
/// assert!("int3".parse::<RowCodec>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RowCodec {
    /// 8-bit codes, f32 scale and bias.
    Int8,
    /// 4-bit codes (two a byte), f16 scale and bias.
    Int4,
    /// 2-bit codes (four a byte), f16 scale and bias.
    Int2,
}

/// A row's quantization parameters: a cell decodes to `code · scale + bias`. For int4 / int2 both
/// are exactly representable in f16 (they are stored as f16).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct RowParams {
    /// The step between consecutive codes (≥ 0).
    pub scale: f32,
    /// The value of code 0.
    pub bias: f32,
}

impl RowParams {
    /// The value of `code`: `code · scale + bias`, as one fused multiply-add in f32.
    ///
    /// ```
    /// use data_sparsifier::quant::RowParams;
    /// let p = RowParams { scale: 0.5, bias: -1.0 };
    /// assert_eq!(p.decode(3), 0.5);
    /// ```
    #[inline]
    pub fn decode(self, code: u8) -> f32 {
        f32::from(code).mul_add(self.scale, self.bias)
    }
}

impl fmt::Display for RowCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RowCodec {
    type Err = QuantError;
    fn from_str(s: &str) -> std::result::Result<Self, QuantError> {
        match s.to_ascii_lowercase().as_str() {
            "int8" => Ok(RowCodec::Int8),
            "int4" => Ok(RowCodec::Int4),
            "int2" => Ok(RowCodec::Int2),
            _ => Err(QuantError::UnknownCodec {
                name: s.to_string(),
            }),
        }
    }
}

impl RowCodec {
    /// Every codec, widest first.
    pub const ALL: [RowCodec; 3] = [RowCodec::Int8, RowCodec::Int4, RowCodec::Int2];

    /// `int8`, `int4` or `int2`.
    pub fn name(self) -> &'static str {
        match self {
            RowCodec::Int8 => "int8",
            RowCodec::Int4 => "int4",
            RowCodec::Int2 => "int2",
        }
    }
    /// Bits per code.
    pub fn bits(self) -> u32 {
        match self {
            RowCodec::Int8 => 8,
            RowCodec::Int4 => 4,
            RowCodec::Int2 => 2,
        }
    }
    /// The largest code, `2^bits − 1`.
    pub fn max_code(self) -> u8 {
        ((1u32 << self.bits()) - 1) as u8
    }
    /// Codes per byte.
    pub fn codes_per_byte(self) -> usize {
        8 / self.bits() as usize
    }
    /// Bytes of `len` packed codes.
    pub fn code_bytes(self, len: usize) -> usize {
        len.div_ceil(self.codes_per_byte())
    }
    /// Bytes of a row's parameters: 8 (two f32) for int8, 4 (two f16) for int4 / int2.
    pub fn param_bytes(self) -> usize {
        match self {
            RowCodec::Int8 => 8,
            RowCodec::Int4 | RowCodec::Int2 => 4,
        }
    }
    /// Bytes of a fused row of `len` cells: the codes, then the parameters (FBGEMM's layout).
    pub fn bytes_per_row(self, len: usize) -> usize {
        self.code_bytes(len) + self.param_bytes()
    }

    /// Code `i` of a packed code buffer (`codes` must hold it).
    ///
    /// ```
    /// use data_sparsifier::quant::RowCodec;
    /// assert_eq!(RowCodec::Int4.code_at(&[0x21], 0), 1); // element 0 in the low nibble
    /// assert_eq!(RowCodec::Int4.code_at(&[0x21], 1), 2);
    /// ```
    #[inline]
    pub fn code_at(self, codes: &[u8], i: usize) -> u8 {
        let per = self.codes_per_byte();
        let shift = (i % per) as u32 * self.bits();
        (codes[i / per] >> shift) & self.max_code()
    }

    /// Quantizes `values` (a row's kept cells) into `codes`, which must be exactly
    /// [`code_bytes`](Self::code_bytes)`(values.len())` long, and returns the row's parameters.
    /// See the [module docs](self) for the arithmetic and its half-step bound.
    ///
    /// ```
    /// use data_sparsifier::quant::RowCodec;
    /// let mut codes = [0u8; 2];
    /// let p = RowCodec::Int4.encode_row(&[0.0, 1.5, 3.0], &mut codes).unwrap();
    /// // 3 / 15 = 0.2 is not an f16: the scale is the next f16 above it, 0.2000732...
    /// assert_eq!(p.bias, 0.0);
    /// assert!(p.scale > 0.2 && p.scale < 0.2001);
    /// assert_eq!(codes, [0x70, 0x0f]); // codes 0, 7, 15; element 0 in the low nibble
    /// ```
    pub fn encode_row(
        self,
        values: &[f32],
        codes: &mut [u8],
    ) -> std::result::Result<RowParams, QuantError> {
        let need = self.code_bytes(values.len());
        if codes.len() != need {
            return Err(QuantError::BufferSize {
                what: format!("{self} codes of a row of {} values", values.len()),
                expected: need,
                actual: codes.len(),
            });
        }
        let params = self.choose_params(values)?;
        codes.iter_mut().for_each(|b| *b = 0);
        if params.scale == 0.0 || values.is_empty() {
            return Ok(params);
        }
        let (scale, bias) = (f64::from(params.scale), f64::from(params.bias));
        let max = f64::from(self.max_code());
        let per = self.codes_per_byte();
        let bits = self.bits();
        for (i, &x) in values.iter().enumerate() {
            let q = ((f64::from(x) - bias) / scale)
                .round_ties_even()
                .clamp(0.0, max) as u8;
            codes[i / per] |= q << ((i % per) as u32 * bits);
        }
        Ok(params)
    }

    /// The parameters [`encode_row`](Self::encode_row) picks for `values`.
    fn choose_params(self, values: &[f32]) -> std::result::Result<RowParams, QuantError> {
        let mut min = f32::INFINITY;
        let mut max = f32::NEG_INFINITY;
        for (i, &x) in values.iter().enumerate() {
            if !x.is_finite() {
                return Err(QuantError::NonFinite {
                    what: "row".into(),
                    index: i,
                    value: x,
                });
            }
            min = min.min(x);
            max = max.max(x);
        }
        if values.is_empty() {
            return Ok(RowParams::default());
        }
        let levels = f64::from(self.max_code());
        let out_of_range = |value: f32| QuantError::OutOfRange {
            what: "row".into(),
            codec: self,
            value,
        };
        match self {
            RowCodec::Int8 => {
                let range = f64::from(max) - f64::from(min);
                let scale = f32_ceil(range / levels);
                Ok(RowParams { scale, bias: min })
            }
            RowCodec::Int4 | RowCodec::Int2 => {
                let bias = f16_floor(f64::from(min)).ok_or_else(|| out_of_range(min))?;
                let range = f64::from(max) - f64::from(bias);
                if range == 0.0 {
                    return Ok(RowParams { scale: 1.0, bias });
                }
                let scale = f16_ceil(range / levels).ok_or_else(|| out_of_range(max))?;
                Ok(RowParams {
                    scale: scale.to_f32(),
                    bias,
                })
            }
        }
    }

    /// Decodes `out.len()` codes with `params`: `out[i] = code_i · scale + bias`. `codes` must be
    /// exactly [`code_bytes`](Self::code_bytes)`(out.len())` long.
    pub fn decode_row(
        self,
        codes: &[u8],
        params: RowParams,
        out: &mut [f32],
    ) -> std::result::Result<(), QuantError> {
        let need = self.code_bytes(out.len());
        if codes.len() != need {
            return Err(QuantError::BufferSize {
                what: format!("{self} codes of a row of {} values", out.len()),
                expected: need,
                actual: codes.len(),
            });
        }
        match self {
            RowCodec::Int8 => {
                for (o, &c) in out.iter_mut().zip(codes) {
                    *o = params.decode(c);
                }
            }
            _ => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = params.decode(self.code_at(codes, i));
                }
            }
        }
        Ok(())
    }

    /// Writes `params` as stored: two little-endian f32 (int8) or f16 (int4 / int2) into `out`,
    /// which must be [`param_bytes`](Self::param_bytes) long.
    pub fn write_params(
        self,
        params: RowParams,
        out: &mut [u8],
    ) -> std::result::Result<(), QuantError> {
        if out.len() != self.param_bytes() {
            return Err(QuantError::BufferSize {
                what: format!("{self} row parameters"),
                expected: self.param_bytes(),
                actual: out.len(),
            });
        }
        match self {
            RowCodec::Int8 => {
                out[..4].copy_from_slice(&params.scale.to_le_bytes());
                out[4..].copy_from_slice(&params.bias.to_le_bytes());
            }
            RowCodec::Int4 | RowCodec::Int2 => {
                out[..2].copy_from_slice(&f16::from_f32(params.scale).to_le_bytes());
                out[2..].copy_from_slice(&f16::from_f32(params.bias).to_le_bytes());
            }
        }
        Ok(())
    }

    /// Reads stored parameters (the inverse of [`write_params`](Self::write_params)), refusing a
    /// scale that is NaN, infinite or negative and a bias that is not finite.
    ///
    /// ```
    /// use data_sparsifier::quant::{QuantError, RowCodec};
    /// let mut b = [0u8; 8];
    /// b[..4].copy_from_slice(&(-1.0f32).to_le_bytes());
    /// assert!(matches!(RowCodec::Int8.read_params(&b), Err(QuantError::BadParams { .. })));
    /// ```
    pub fn read_params(self, bytes: &[u8]) -> std::result::Result<RowParams, QuantError> {
        if bytes.len() != self.param_bytes() {
            return Err(QuantError::BufferSize {
                what: format!("{self} row parameters"),
                expected: self.param_bytes(),
                actual: bytes.len(),
            });
        }
        let (scale, bias) = match self {
            RowCodec::Int8 => (
                f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
                f32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            ),
            RowCodec::Int4 | RowCodec::Int2 => (
                f16::from_le_bytes([bytes[0], bytes[1]]).to_f32(),
                f16::from_le_bytes([bytes[2], bytes[3]]).to_f32(),
            ),
        };
        if !(scale.is_finite() && scale >= 0.0 && bias.is_finite()) {
            return Err(QuantError::BadParams {
                what: format!("{self} row"),
                scale,
                bias,
            });
        }
        Ok(RowParams { scale, bias })
    }

    /// Encodes a dense row into FBGEMM's fused layout: the codes, then the parameters. `row` must
    /// be [`bytes_per_row`](Self::bytes_per_row)`(values.len())` long.
    ///
    /// ```
    /// use data_sparsifier::quant::RowCodec;
    /// let values = [10.0f32, 95.0, 180.0, 265.0]; // scale 1, bias 10
    /// let mut row = vec![0u8; RowCodec::Int8.bytes_per_row(4)];
    /// RowCodec::Int8.encode_fused_row(&values, &mut row).unwrap();
    /// assert_eq!(&row[..4], &[0, 85, 170, 255]);
    /// assert_eq!(f32::from_le_bytes(row[4..8].try_into().unwrap()), 1.0); // the scale
    /// assert_eq!(f32::from_le_bytes(row[8..12].try_into().unwrap()), 10.0); // the bias
    /// let mut back = [0f32; 4];
    /// RowCodec::Int8.decode_fused_row(&row, &mut back).unwrap();
    /// assert_eq!(back, values);
    /// ```
    pub fn encode_fused_row(
        self,
        values: &[f32],
        row: &mut [u8],
    ) -> std::result::Result<RowParams, QuantError> {
        let need = self.bytes_per_row(values.len());
        if row.len() != need {
            return Err(QuantError::BufferSize {
                what: format!("{self} fused row of {} values", values.len()),
                expected: need,
                actual: row.len(),
            });
        }
        let (codes, params) = row.split_at_mut(self.code_bytes(values.len()));
        let p = self.encode_row(values, codes)?;
        self.write_params(p, params)?;
        Ok(p)
    }

    /// Decodes a fused row (codes, then parameters) into `out`; `row` must be
    /// [`bytes_per_row`](Self::bytes_per_row)`(out.len())` long.
    pub fn decode_fused_row(
        self,
        row: &[u8],
        out: &mut [f32],
    ) -> std::result::Result<RowParams, QuantError> {
        let need = self.bytes_per_row(out.len());
        if row.len() != need {
            return Err(QuantError::BufferSize {
                what: format!("{self} fused row of {} values", out.len()),
                expected: need,
                actual: row.len(),
            });
        }
        let (codes, params) = row.split_at(self.code_bytes(out.len()));
        let p = self.read_params(params)?;
        self.decode_row(codes, p, out)?;
        Ok(p)
    }
}

/// The smallest f32 ≥ `x` (x ≥ 0, finite).
fn f32_ceil(x: f64) -> f32 {
    let s = x as f32;
    if f64::from(s) >= x {
        s
    } else {
        f32::from_bits(s.to_bits() + 1) // s ≥ 0 here, so the next bit pattern is the next float up
    }
}

/// The next f16 above `h` (finite `h`).
fn f16_next_up(h: f16) -> f16 {
    let b = h.to_bits();
    if b & 0x7fff == 0 {
        f16::from_bits(1)
    } else if b & 0x8000 == 0 {
        f16::from_bits(b + 1)
    } else {
        f16::from_bits(b - 1)
    }
}

/// The smallest finite f16 ≥ `x`, or `None` beyond the f16 range.
fn f16_ceil(x: f64) -> Option<f16> {
    let mut h = f16::from_f64(x);
    if h.to_f64() < x {
        h = f16_next_up(h);
    }
    h.is_finite().then_some(h).map(|h| {
        // -0.0 -> 0.0 so a scale reads back as non-negative zero
        if h.to_bits() == 0x8000 {
            f16::ZERO
        } else {
            h
        }
    })
}

/// The largest finite f16 ≤ `x`, or `None` beyond the f16 range.
fn f16_floor(x: f64) -> Option<f32> {
    f16_ceil(-x).map(|h| -h.to_f32()).map(|v| v + 0.0)
}

/// A table quantized with one of our [`RowCodec`]s over its kept cells.
///
/// Per row: the codes of the kept cells, in column order, packed from a byte boundary, and the
/// row's [`RowParams`] computed from the kept cells only. The mask says which cells are kept;
/// a pruned cell decodes to exactly 0. Rows without a pruned cell are encoded exactly as
/// [`RowCodec::encode_fused_row`] would (the same codes and parameters).
///
/// ```
/// use data_sparsifier::quant::{MaskedRowwiseTable, RowCodec};
/// use data_sparsifier::{Mask, Tensor};
/// let t = Tensor::from_vec(vec![0.0f32, 10.0, 10.5, 0.0, 11.0, 12.0], [2, 3]).unwrap();
/// let mask = Mask::from_dense_u8([2, 3], &[0, 1, 1, 0, 1, 1]).unwrap();
/// let q = MaskedRowwiseTable::encode(RowCodec::Int8, "emb", &t, Some(&mask)).unwrap();
/// let back = q.dequantize();
/// let v = back.as_slice::<f32>().unwrap();
/// assert_eq!((v[0], v[3]), (0.0, 0.0)); // pruned: exactly 0
/// assert!((v[1] - 10.0).abs() <= q.params()[0].scale / 2.0); // the range is [10, 10.5], not [0, 10.5]
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct MaskedRowwiseTable {
    codec: RowCodec,
    rows: usize,
    cols: usize,
    mask: Mask,
    row_start: Vec<usize>,
    codes: Vec<u8>,
    params: Vec<RowParams>,
}

impl MaskedRowwiseTable {
    /// Quantizes a 2-D float table (any float dtype, read as f32) with `codec` over the cells
    /// `mask` keeps (all when `None`). `name` names the data in errors.
    pub fn encode(
        codec: RowCodec,
        name: &str,
        table: &Tensor,
        mask: Option<&Mask>,
    ) -> Result<Self> {
        let (rows, cols) = super::pytorch::table_dims(name, table.shape())?;
        let mask = match mask {
            Some(m) => {
                m.check_shape(name, table.shape())?;
                m.clone()
            }
            None => Mask::ones([rows, cols]),
        };
        let values = super::pytorch::to_f32(table);
        let keep = mask.to_bools();
        let mut row_start = Vec::with_capacity(rows + 1);
        row_start.push(0usize);
        for r in 0..rows {
            let kept = keep[r * cols..(r + 1) * cols]
                .iter()
                .filter(|&&k| k)
                .count();
            row_start.push(row_start[r] + codec.code_bytes(kept));
        }
        let mut codes = vec![0u8; row_start[rows]];
        let mut slices: Vec<&mut [u8]> = Vec::with_capacity(rows);
        let mut rest = codes.as_mut_slice();
        for r in 0..rows {
            let (a, b) = rest.split_at_mut(row_start[r + 1] - row_start[r]);
            slices.push(a);
            rest = b;
        }
        let params = slices
            .into_par_iter()
            .enumerate()
            .map(|(r, out)| {
                let row = &values[r * cols..(r + 1) * cols];
                let k = &keep[r * cols..(r + 1) * cols];
                let what = || format!("data {name:?} row {r}");
                if let Some(c) = (0..cols).find(|&c| k[c] && !row[c].is_finite()) {
                    return Err(QuantError::NonFinite {
                        what: what(),
                        index: c,
                        value: row[c],
                    });
                }
                let kept: Vec<f32> = row
                    .iter()
                    .zip(k)
                    .filter(|(_, &k)| k)
                    .map(|(&x, _)| x)
                    .collect();
                codec.encode_row(&kept, out).map_err(|e| e.about(what()))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(MaskedRowwiseTable {
            codec,
            rows,
            cols,
            mask,
            row_start,
            codes,
            params,
        })
    }
    /// The codec.
    pub fn codec(&self) -> RowCodec {
        self.codec
    }
    /// `(rows, cols)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }
    /// The mask of kept cells.
    pub fn mask(&self) -> &Mask {
        &self.mask
    }
    /// Each row's parameters.
    pub fn params(&self) -> &[RowParams] {
        &self.params
    }
    /// The packed codes of row `r`'s kept cells.
    pub fn row_codes(&self, r: usize) -> &[u8] {
        &self.codes[self.row_start[r]..self.row_start[r + 1]]
    }
    /// Bytes of codes plus parameters (the mask not counted).
    pub fn nbytes(&self) -> usize {
        self.codes.len() + self.rows * self.codec.param_bytes()
    }
    /// The decoded table, f32 `[rows, cols]`: kept cells `code · scale + bias`, pruned cells 0.
    pub fn dequantize(&self) -> Tensor {
        let keep = self.mask.to_bools();
        let mut out = vec![0f32; self.rows * self.cols];
        out.par_chunks_mut(self.cols.max(1))
            .take(self.rows)
            .enumerate()
            .for_each(|(r, row)| {
                let codes = self.row_codes(r);
                let p = self.params[r];
                let mut j = 0;
                for (c, o) in row.iter_mut().enumerate() {
                    if keep[r * self.cols + c] {
                        *o = p.decode(self.codec.code_at(codes, j));
                        j += 1;
                    }
                }
            });
        Tensor::from_vec(out, [self.rows, self.cols]).expect("rows * cols values")
    }
}
