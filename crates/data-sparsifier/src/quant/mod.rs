//! Quantized embedding tables: PyTorch's post-training sparse quantization, exactly, and our
//! rowwise codecs over the kept cells.
//!
//! | what | PyTorch / FBGEMM | here |
//! |---|---|---|
//! | `post_training_sparse_quantize` (sparsify, then 8-bit per-row quint8 with float qparams) | `torch.ao.pruning._experimental.data_sparsifier.quantization_utils` | [`post_training_sparse_quantize`] |
//! | the quantized table (`int_repr`, `q_per_channel_scales`, `q_per_channel_zero_points`, `dequantize`) | `torch.quantize_per_channel` with `per_channel_affine_float_qparams` | [`QuantizedTable`] |
//! | quantized `Embedding` / `EmbeddingBag` forward | `torch.ao.nn.quantized.Embedding` / `EmbeddingBag` (`embedding_bag_byte`) | [`QuantizedEmbedding`], [`QuantizedEmbeddingBag`] |
//! | rowwise int8 (f32 scale + bias) and int4 / int2 (f16 scale + bias) rows | FBGEMM's fused rowwise rows (`embedding_bag_byte_prepack`, `embedding_bag_4bit_prepack`) | [`RowCodec`] |
//!
//! **PyTorch's form** ([`QuantizedTable`]) reproduces PyTorch's f32 arithmetic bit for bit (the
//! golden cases in `tests/data/conformance/quant/` check it). Its range includes the pruned zeros,
//! so a pruned cell dequantizes only to about 0.
//!
//! **Ours** ([`RowCodec`]) quantizes the *kept* cells of a row only: the row's range is not widened
//! by its zeros, and a pruned cell, which the mask marks, is exactly 0 after decoding. Every decoded
//! cell is within half a quantization step of its value (plus the f32 rounding of the result).
//! A row without pruned cells is stored in FBGEMM's fused row layout
//! ([`RowCodec::encode_fused_row`]), so an FBGEMM-style kernel reads it as it is.
//!
//! ```
//! use data_sparsifier::quant::RowCodec;
//! let kept = [0.5f32, -1.0, 2.0, 0.25]; // a row's kept cells
//! let codec = RowCodec::Int8;
//! let mut codes = vec![0u8; codec.code_bytes(kept.len())];
//! let params = codec.encode_row(&kept, &mut codes).unwrap();
//! let mut back = [0f32; 4];
//! codec.decode_row(&codes, params, &mut back).unwrap();
//! for (x, y) in kept.iter().zip(back) {
//!     assert!((x - y).abs() <= params.scale / 2.0 + 1e-6);
//! }
//! assert!(codec.encode_row(&[f32::NAN], &mut [0u8]).is_err()); // a typed error, not a panic
//! ```

mod error;
mod post_training;
mod pytorch;
mod rowwise;

pub use error::QuantError;
pub use post_training::{
    post_training_sparse_quantize, EmbeddingModule, QuantizedModule, SparseQuantizeOptions,
};
pub use pytorch::{QuantizedEmbedding, QuantizedEmbeddingBag, QuantizedTable};
pub use rowwise::{MaskedRowwiseTable, RowCodec, RowParams};
