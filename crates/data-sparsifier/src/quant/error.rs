//! The quantization error type.

use super::RowCodec;

/// Everything that can go wrong while quantizing, encoding or decoding a table. Each message is
/// one line naming the data, the value and the fix. It converts into the crate's
/// [`Error`](crate::Error) (`Error::Quant`), keeping itself as the source.
///
/// ```
/// use data_sparsifier::quant::{QuantError, RowCodec};
/// let err = RowCodec::Int4.encode_row(&[1.0, f32::INFINITY], &mut [0u8]).unwrap_err();
/// assert!(matches!(err, QuantError::NonFinite { index: 1, .. }));
/// assert_eq!(
///     err.to_string(),
///     "cannot quantize row: value inf at position 1 is not finite: replace NaN and infinities (e.g. with 0) before quantizing, or leave this table unquantized"
/// );
/// ```
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// A NaN or an infinity among the values to quantize.
    #[error("cannot quantize {what}: value {value} at position {index} is not finite: replace NaN and infinities (e.g. with 0) before quantizing, or leave this table unquantized")]
    NonFinite {
        /// The data (`row`, or `data "emb" row 3`).
        what: String,
        /// The position of the value in the row (or the column in the table).
        index: usize,
        /// The value.
        value: f32,
    },

    /// A value whose scale or bias does not fit the codec's parameter type (f16 for int4 / int2).
    #[error("cannot quantize {what} with {codec}: value {value} needs a scale or bias beyond the f16 range (65504) of {codec}'s parameters: use int8, whose scale and bias are f32")]
    OutOfRange {
        /// The data.
        what: String,
        /// The codec.
        codec: RowCodec,
        /// The offending value (the row's minimum, or its range per step).
        value: f32,
    },

    /// A code or parameter buffer of the wrong size.
    #[error("{what}: {actual} bytes where {expected} are needed: size the buffer with RowCodec::code_bytes / bytes_per_row")]
    BufferSize {
        /// What the buffer is for.
        what: String,
        /// The bytes needed.
        expected: usize,
        /// The bytes given.
        actual: usize,
    },

    /// Stored row parameters that cannot be decoded: a scale that is NaN, infinite or negative, or
    /// a bias that is not finite.
    #[error("{what}: invalid quantization parameters scale = {scale}, bias = {bias}: the scale must be finite and >= 0 and the bias finite; the data is corrupt or was written by another tool")]
    BadParams {
        /// The data.
        what: String,
        /// The scale read.
        scale: f32,
        /// The bias read.
        bias: f32,
    },

    /// A codec name that is not one of ours.
    #[error("unknown quantization codec {name:?}: the codecs are int8, int4 and int2")]
    UnknownCodec {
        /// The name given.
        name: String,
    },

    /// A table to quantize that is not 2-D.
    #[error("cannot quantize {name:?} of shape {shape:?}: a quantized table is 2-D (rows, cols): reshape it first")]
    NotATable {
        /// The data name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },

    /// A module selected for quantization that is not an embedding or embedding bag.
    #[error("module {name:?} is a {kind}, not an Embedding or EmbeddingBag: post_training_sparse_quantize only quantizes embeddings; leave it out of the selection")]
    NotAnEmbedding {
        /// The module's name.
        name: String,
        /// Its kind.
        kind: &'static str,
    },
}

impl QuantError {
    /// The same error about `what` (e.g. `data "emb" row 3`) instead of the bare `row`.
    ///
    /// ```
    /// use data_sparsifier::quant::RowCodec;
    /// let err = RowCodec::Int8.encode_row(&[f32::NAN], &mut [0u8]).unwrap_err().about("data \"emb\" row 3");
    /// assert!(err.to_string().starts_with("cannot quantize data \"emb\" row 3: value NaN"));
    /// ```
    pub fn about(self, what: impl Into<String>) -> Self {
        let what = what.into();
        match self {
            QuantError::NonFinite { index, value, .. } => {
                QuantError::NonFinite { what, index, value }
            }
            QuantError::OutOfRange { codec, value, .. } => {
                QuantError::OutOfRange { what, codec, value }
            }
            QuantError::BufferSize {
                expected, actual, ..
            } => QuantError::BufferSize {
                what,
                expected,
                actual,
            },
            QuantError::BadParams { scale, bias, .. } => {
                QuantError::BadParams { what, scale, bias }
            }
            other => other,
        }
    }
}
