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
//! | `Embedding` / `EmbeddingBag` lookup modules | [`embedding`] |
//! | the container and the [`UpdateMask`] trait | [`sparsifier`] |
//! | block-norm sparsification (PyTorch's `DataNormSparsifier`) | [`norm`] |
//! | saved state (one safetensors file) | [`state`] |
//! | atomic file output | [`io`] |
//!
//! An implementer writes only [`UpdateMask::update_mask`]; the container does the housekeeping:
//! per-name configs, replacing data, stepping, squashing, and saving state. See [`DataSparsifier`]
//! for a complete custom sparsifier.
#![warn(missing_docs)]

pub mod data;
pub mod dtype;
pub mod embedding;
pub mod error;
pub mod io;
pub mod mask;
pub mod norm;
pub mod random;
pub mod sparsifier;
pub mod state;
pub mod tensor;

pub use half;

pub use data::{Data, DataKind};
pub use dtype::{DType, Element};
pub use embedding::{BagMode, Bags, Embedding, EmbeddingBag};
pub use error::{Error, Result};
pub use mask::Mask;
pub use norm::{
    compute_mask, pruned_block_count, release_scratch, DataNorm, DataNormConfig, DataNormPatch,
    DataNormSparsifier, NanPolicy, Norm,
};
pub use sparsifier::{validate_name, Config, DataSparsifier, MaskedView, UpdateMask, Version};
pub use state::{EntryState, StateDict};
pub use tensor::{Parameter, Slice, Storage, Tensor, TensorView};
