//! # data-sparsifier
//!
//! Sparsify data tensors, trainable parameters and embedding / embedding-bag tables: PyTorch's
//! experimental data sparsifier (`torch.ao.pruning._experimental.data_sparsifier`), redesigned for
//! Rust, bit-packed and memory-speed.
//!
//! ## The surface
//!
//! The crate root holds what almost every user needs: the container and its trait
//! ([`DataSparsifier`], [`UpdateMask`], [`Config`], [`Version`], [`MaskedView`] and the options of
//! its calls, [`AddOptions`], [`SquashOptions`], [`LoadOptions`]), the DataNorm rule
//! ([`DataNorm`], [`DataNormConfig`], [`DataNormPatch`], PyTorch's [`DataNormSparsifier`]), rules
//! chosen at run time ([`Rule`], [`Registry`]), data ([`Tensor`], [`TensorView`], [`Parameter`],
//! [`Data`], [`DataKind`], [`DType`], [`Element`], [`Mask`], PyTorch's [`Embedding`] and
//! [`EmbeddingBag`]), saved state ([`StateDict`], [`SparsifierState`], [`EntryState`]) and
//! [`Error`] / [`Result`].
//!
//! A few public modules hold what only some users need; everything else is private:
//!
//! | module | what it adds to the root |
//! |---|---|
//! | [`dtype`] | the `f16` / `bf16` element types (from `half`, re-exported so callers need no `half` dependency) |
//! | [`tensor`] | typed slices and storage ([`tensor::Slice`], [`tensor::Storage`]), shape helpers, and the framework seam: [`tensor::Handle`], [`tensor::ExternalTensor`] |
//! | [`embedding`] | [`embedding::BagMode`], [`embedding::Bags`] for `EmbeddingBag` lookups |
//! | [`norm`] | DataNorm's knobs ([`norm::Norm`], [`norm::NanPolicy`], [`norm::Scratch`]), the direct kernel call ([`norm::compute_mask`]) and one sparsity budget over many tensors ([`norm::budget`]) |
//! | [`rule`] | the rule layer: [`rule::Schema`], [`rule::TypedRule`], the magnitude rule ([`rule::Magnitude`]) |
//! | [`compact`] | compact tables (kept blocks, a bit per block, row remap; float or int8/int4 codes) in a standard safetensors file, and lookups over them ([`compact::CompactEmbedding`], [`compact::CompactEmbeddingBag`]) |
//! | [`format`] | the storage seam ([`format::TensorSource`], [`format::TensorSink`]), the safetensors format, all-or-nothing output ([`format::Staged`], [`format::AtomicFile`]) |
//! | [`state`] | the state file itself: [`state::StateWriter`] (its one writer), [`state::write_state_file`] |
//! | [`scheduler`] | the data scheduler and its schedules |
//! | [`hooks`] | training-loop hooks (PyTorch's `lightning` callbacks) |
//! | [`quant`] | quantized tables: PyTorch's `post_training_sparse_quantize` exactly ([`quant::post_training_sparse_quantize`]), and our rowwise int8/int4/int2 codecs over the kept cells ([`quant::RowCodec`]) |
//! | [`random`] | a seeded generator for examples, tests and benchmarks |
//! | `candle` | candle models, zero-copy (feature `candle`) |
//!
//! No other crate's types appear in the public API except `half`'s `f16` / `bf16` (through
//! [`dtype`]) and, behind the `candle` feature, candle's own types in the `candle` module; the
//! file format's types (safetensors) stay inside [`format`]. `serde_json::Value` is the
//! config type of [`Rule`]s, by design (configs go in and out as JSON).
//!
//! An implementer writes only [`UpdateMask::update_mask`]; the container does the housekeeping:
//! per-name configs, replacing data, stepping, squashing, and saving state. See [`DataSparsifier`]
//! for a complete custom sparsifier.
//!
//! ```
//! use data_sparsifier::{DataNormConfig, DataNormSparsifier, Parameter, SquashOptions, Tensor, Version};
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
//! sp.squash_mask(None, SquashOptions::default()).unwrap(); // write the sparse values into the shared parameter
//! assert_eq!(w.read().as_slice::<f32>().unwrap(), &[0.0, 0.0, 3.0, 1.0]);
//! ```
#![warn(missing_docs)]

#[cfg(feature = "candle")]
pub mod candle;
pub mod compact;
mod data;
pub mod dtype;
pub mod embedding;
mod error;
pub mod format;
mod handle;
pub mod hooks;
mod io;
pub mod limits;
mod magnitude;
mod mask;
mod mem;
pub mod norm;
pub mod quant;
pub mod random;
pub mod rule;
pub mod scheduler;
mod simd;
mod sparsifier;
pub mod state;
pub mod tensor;

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
pub use embedding::{Embedding, EmbeddingBag};
pub use error::{Error, Result};
pub use mask::Mask;
pub use norm::{DataNorm, DataNormConfig, DataNormPatch, DataNormSparsifier};
pub use rule::{Registry, Rule};
pub use sparsifier::{
    validate_name, AddOptions, Config, DataSparsifier, LoadOptions, MaskedView, SquashOptions,
    UpdateMask, Version,
};
pub use state::{EntryState, SparsifierState, StateDict};
pub use tensor::{Parameter, Tensor, TensorView};
