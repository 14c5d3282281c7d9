//! # data-sparsifier
//!
//! Sparsify data tensors, trainable parameters and embedding / embedding-bag tables: PyTorch's
//! experimental data sparsifier (`torch.ao.pruning._experimental.data_sparsifier`), redesigned for
//! Rust, bit-packed and memory-speed.
//!
//! The pieces, each in its own module:
//!
//! | concept | home |
//! |---|---|
//! | element types, `f32`/`f64`/`f16`/`bf16` | [`dtype`] |
//! | tensors, typed slice views, shared [`Parameter`] handles | [`tensor`] |
//! | bit-packed masks | [`mask`] |
//! | the kinds of data a sparsifier takes | [`data`] |
//! | where an entry's data lives (ours, or another framework's) | [`handle`] |
//! | `Embedding` / `EmbeddingBag` lookup modules | [`embedding`] |
//! | the container and the [`UpdateMask`] trait | [`sparsifier`] |
//! | block-norm sparsification (PyTorch's `DataNormSparsifier`) | [`norm`] |
//! | one sparsity budget over many tensors (global threshold, mergeable states) | [`norm::budget`] |
//! | saved state (one safetensors file) | [`state`] |
//! | data scheduler: a config field over steps/epochs | [`scheduler`] |
//! | training-loop hooks (post-training, training-aware) | [`hooks`] |
//! | candle models, zero-copy (feature `candle`) | `candle` |
//! | atomic file output, all-or-nothing commits, memory maps | [`io`] |
//! | rules chosen at run time: [`Rule`], its config schema, the [`Registry`] | [`rule`] |
//! | the magnitude rule (zero `|x| < threshold`) | [`magnitude`] |
//! | the storage seam (`TensorSource`, `TensorSink`) and the safetensors format | [`format`] |
//! | compact tables (kept blocks, block mask, row remap) and lookups over them | [`compact`] |
//! | quantized tables: PyTorch's `post_training_sparse_quantize` exactly, and our rowwise int8/int4/int2 codecs over the kept cells | [`quant`] |
//!
//! An implementer writes only [`UpdateMask::update_mask`]; the container does the housekeeping:
//! per-name configs, replacing data, stepping, squashing, and saving state. See [`DataSparsifier`]
//! for a complete custom sparsifier.
//!
//! ```
//! use data_sparsifier::{DataNormConfig, DataNormSparsifier, Parameter, Tensor, Version};
//! // Prune the half of the (1, 2) blocks with the smallest L1 norm.
//! let mut sp = DataNormSparsifier::data_norm(DataNormConfig {
//!     sparse_block_shape: (1, 2),
//!     ..Default::default()
//! })
//! .unwrap();
//! let w = Parameter::new(Tensor::from_vec(vec![0.1f32, -0.2, 3.0, 1.0], [1, 4]).unwrap());
//! sp.add_data("w", &w).unwrap();
//! sp.step().unwrap();
//! assert_eq!(sp.get_data("w", Version::Masked).unwrap().to_f64_vec(), vec![0.0, 0.0, 3.0, 1.0]);
//! sp.squash_mask(None, true).unwrap(); // write the sparse values into the shared parameter
//! assert_eq!(w.read().as_slice::<f32>().unwrap(), &[0.0, 0.0, 3.0, 1.0]);
//! ```
#![warn(missing_docs)]

#[cfg(feature = "candle")]
pub mod candle;
pub mod compact;
pub mod data;
pub mod dtype;
pub mod embedding;
pub mod error;
pub mod format;
pub mod handle;
pub mod hooks;
pub mod io;
pub mod magnitude;
pub mod mask;
pub mod norm;
pub mod quant;
pub mod random;
pub mod rule;
pub mod scheduler;
pub mod sparsifier;
pub mod state;
pub mod tensor;

pub use half;

/// Lets the test code shared with the integration tests (`tests/common/`, included by `#[path]`)
/// name this crate `data_sparsifier` inside the crate's unit tests too.
#[cfg(test)]
extern crate self as data_sparsifier;

/// The README's code blocks, compiled and run as doctests so they cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
mod readme {}

pub use data::{Data, DataKind};
pub use dtype::{DType, Element};
pub use embedding::{BagMode, Bags, Embedding, EmbeddingBag};
pub use error::{Error, Result};
pub use handle::{ExternalTensor, Handle};
pub use mask::Mask;
pub use norm::{DataNorm, DataNormConfig, DataNormPatch, DataNormSparsifier, NanPolicy, Norm};
pub use rule::{Registry, Rule};
pub use sparsifier::{validate_name, Config, DataSparsifier, MaskedView, UpdateMask, Version};
pub use state::{EntryState, SparsifierState, StateDict};
pub use tensor::{Parameter, Slice, Storage, Tensor, TensorView};
