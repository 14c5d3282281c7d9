//! `DataNorm`: PyTorch's `DataNormSparsifier`, block-norm sparsification with the same answers,
//! found at memory speed.
//!
//! The data (seen as a 2-D `rows × cols` matrix, see [`as_2d`](crate::tensor::as_2d)) is tiled
//! into `sparse_block_shape` blocks from the top-left corner; blocks at the bottom and right edges
//! may be partial. Each block is scored by the mean of `|x|` ([`Norm::L1`]) or `x²` ([`Norm::L2`])
//! over its real cells, with PyTorch's exact arithmetic (see below). Then:
//!
//! 1. `k = round_half_even(sparsity_level × num_blocks)` blocks with the lowest scores are pruned
//!    ([`pruned_block_count`]). Equal scores: the lowest row-major block index goes first.
//! 2. In each pruned block the `zeros_per_block` cells with the smallest `|x|` (or `x²`) are zeroed;
//!    equal values: the lowest row-major index inside the block goes first. An edge block with
//!    fewer real cells than `zeros_per_block` is zeroed entirely.
//!
//! N:M sparsity (e.g. 2:4) is `sparsity_level = 1.0`, block `(1, M)`, `zeros_per_block = N`.
//!
//! **Arithmetic.** A block score is summed row by row, cell by cell, from 0 in the accumulator type
//! (`f32` for `f32`/`f16`/`bf16` data, `f64` for `f64`), divided by the number of real cells and,
//! for `f16`/`bf16`, rounded back to the data type; for L2 on `f16`/`bf16` each `x*x` is first
//! rounded to the data type. That is what PyTorch's `avg_pool2d` CPU kernel does, so near-equal
//! scores order as in PyTorch; it is checked against 300 golden PyTorch cases
//! (`tests/conformance.rs`).
//!
//! **Cost.** One fused parallel pass over the data computes every block score and, using a
//! sample-based key interval, stores a one-byte code per block (in a [`Scratch`] buffer that the
//! [`DataNorm`] rule keeps between steps) and collects what the selection needs; a linear-time selection finds the
//! threshold; one parallel pass writes the mask 64 bits at a time, re-reading data only for pruned
//! blocks that are partly zeroed. No sort of the whole tensor. The passes run in parallel tasks,
//! runs of consecutive blocks: whole block rows, or runs of block columns when one block row is
//! larger than a task (1-D data, fewer rows than the block height, very wide rows). If the sampled
//! interval misses, the scores are recomputed into one key per block (2, 4 or 8 bytes) for a radix
//! select. See `docs/data-norm.md` for the design, the extra memory of every route (including
//! per-worker scratch for large, partly zeroed blocks) and benchmark numbers.
//!
//! ```
//! use data_sparsifier::norm::{DataNormConfig, DataNormPatch, DataNormSparsifier};
//! use data_sparsifier::{AddOptions, Tensor, Version};
//!
//! let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
//! let data = Tensor::from_vec(vec![0.1f32, -0.2, 0.1, 0.3, 5.0, 6.0, -7.0, 8.0], [1, 8]).unwrap();
//! sp.add_data("row", data).unwrap();
//! // 2:4 sparsity on another tensor.
//! let t = Tensor::from_vec(vec![1.0f32, -4.0, 3.0, 2.0], [1, 4]).unwrap();
//! sp.add_data_with("nm", t, AddOptions::patched(DataNormPatch::new().sparsity_level(1.0).zeros_per_block(2))).unwrap();
//! sp.step().unwrap();
//! // 2 blocks of 4 at level 0.5: the block with the smaller mean |x| is zeroed.
//! assert_eq!(sp.get_mask("row").unwrap().to_dense_u8(), vec![0, 0, 0, 0, 1, 1, 1, 1]);
//! assert_eq!(sp.get_mask("nm").unwrap().to_dense_u8(), vec![0, 1, 1, 0]);
//! let masked = sp.get_data("nm", Version::Masked).unwrap();
//! assert_eq!(masked.as_slice::<f32>().unwrap(), &[0.0, -4.0, 3.0, 0.0]);
//! ```

#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod budget;
mod config;
mod kernel;
mod networks;
mod pass;
mod plan;
mod scores;
mod scratch;
mod select;
#[cfg(test)]
mod tests;
mod words;

pub use config::{DataNormConfig, DataNormPatch, NanPolicy, Norm};
pub use scratch::Scratch;

use crate::error::{Error, Result};
use crate::mask::Mask;
use crate::rule::{Rule, Schema, TypedRule};
use crate::sparsifier::{DataSparsifier, UpdateMask};
use crate::tensor::{Slice, TensorView};

/// The block-norm mask-update rule (PyTorch's `DataNormSparsifier.update_mask`), for
/// [`DataSparsifier`]. It keeps no per-name state; it owns the kernel's [`Scratch`] space, reused
/// from step to step (see [`release_scratch`](DataNorm::release_scratch)).
///
/// ```
/// use data_sparsifier::norm::{DataNorm, DataNormConfig};
/// use data_sparsifier::{DataSparsifier, Tensor, UpdateMask};
/// assert_eq!(DataNorm::new().name(), "DataNormSparsifier");
/// let mut sp = DataSparsifier::new(DataNorm::new(), DataNormConfig { sparsity_level: 1.0, ..Default::default() }).unwrap();
/// sp.add_data("t", Tensor::from_vec(vec![1.0f32; 8], [2, 4]).unwrap()).unwrap();
/// sp.step().unwrap();
/// assert_eq!(sp.get_mask("t").unwrap().count_kept(), 0);
/// ```
#[derive(Debug, Default)]
pub struct DataNorm {
    scratch: scratch::ScratchPool,
}

impl Clone for DataNorm {
    /// A rule with the same (empty) configuration; scratch space is not shared or copied.
    fn clone(&self) -> Self {
        DataNorm::new()
    }
}

impl DataNorm {
    /// The rule, with no scratch space allocated yet.
    pub fn new() -> Self {
        DataNorm::default()
    }

    /// Frees the scratch space this rule keeps between steps, and returns its size in bytes.
    ///
    /// For inputs of more than 32 768 blocks the kernel stores one byte per block; the rule keeps
    /// that buffer (the size of the largest such input so far) because allocating it afresh every
    /// step costs page faults. Call this to give the memory back, e.g. after the last step.
    ///
    /// ```
    /// use data_sparsifier::norm::{DataNormConfig, DataNormSparsifier};
    /// use data_sparsifier::{random::randn, DType};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// sp.add_data("t", randn([1024, 256], DType::F32, 1)).unwrap(); // 65 536 blocks of (1, 4)
    /// sp.step().unwrap();
    /// assert_eq!(sp.updater().release_scratch(), 65_536);
    /// assert_eq!(sp.updater().release_scratch(), 0);
    /// ```
    pub fn release_scratch(&self) -> usize {
        self.scratch.release()
    }
}

/// A [`DataSparsifier`] with the [`DataNorm`] rule: the counterpart of PyTorch's
/// `DataNormSparsifier`.
///
/// ```
/// use data_sparsifier::norm::{DataNormConfig, DataNormSparsifier};
/// let sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
/// assert!(sp.is_empty());
/// ```
pub type DataNormSparsifier = DataSparsifier<DataNorm>;

impl UpdateMask for DataNorm {
    type Config = DataNormConfig;
    type State = ();

    fn name(&self) -> &str {
        "DataNormSparsifier"
    }

    fn schema(&self) -> Option<Schema> {
        Some(DataNormConfig::schema())
    }

    fn describe(&self, config: &DataNormConfig) -> String {
        config.describe()
    }

    fn lint(&self, config: &DataNormConfig) -> Option<String> {
        // Valid (PyTorch accepts it) but prunes nothing: almost always a slip.
        (config.zeros_per_block == Some(0)).then(|| {
            "zeros_per_block is 0: nothing in them is zeroed; give zeros_per_block = 1 or more \
             (--zeros-per-block), or leave it unset for whole blocks"
                .to_string()
        })
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
        self.scratch
            .with(|scratch| compute_mask_with(name, data, config, mask, scratch))
    }
}

/// The registry's `datanorm` rule.
pub(crate) fn rule() -> Box<dyn Rule> {
    Box::new(TypedRule::new(
        "datanorm",
        DataNorm::new(),
        DataNormConfig::default(),
    ))
}

impl DataSparsifier<DataNorm> {
    /// A [`DataNormSparsifier`] with `defaults` as the default config (validated).
    ///
    /// ```
    /// use data_sparsifier::norm::{DataNormConfig, DataNormSparsifier};
    /// use data_sparsifier::Error;
    /// assert!(DataNormSparsifier::data_norm(DataNormConfig::default()).is_ok());
    /// let bad = DataNormConfig { sparsity_level: 2.0, ..Default::default() };
    /// assert!(matches!(DataNormSparsifier::data_norm(bad), Err(Error::InvalidConfig { .. })));
    /// ```
    pub fn data_norm(defaults: DataNormConfig) -> Result<Self> {
        DataSparsifier::new(DataNorm::new(), defaults)
    }
}

/// Computes the DataNorm mask of `data` into `mask`, without a container: the kernel behind
/// [`DataNorm`], usable on any [`TensorView`] (for example a memory-mapped file).
///
/// `mask` must have the data's shape; it is completely rewritten (its previous bits do not matter).
/// Data of 0, 1 or 2 dims is seen as 2-D ([`as_2d`](crate::tensor::as_2d)): `()` is 1×1, `(n,)`
/// is one row, `(n, 1)` is n rows of one column. Empty data gives an empty mask.
///
/// Errors: an invalid config ([`Error::InvalidConfig`]), a mask of another shape
/// ([`Error::ShapeMismatch`]), data of more than 2 dims ([`Error::UnsupportedShape`]), NaN in the
/// data with [`NanPolicy::Error`] ([`Error::NanInData`]; the mask is then left unchanged).
///
/// Each call starts with fresh scratch space; to reuse it across calls, use [`compute_mask_with`]
/// (the [`DataNorm`] rule does).
///
/// ```
/// use data_sparsifier::norm::{compute_mask, DataNormConfig, Norm};
/// use data_sparsifier::{Mask, TensorView};
/// // The worked example of the reference (3x5 data, (2,2) blocks, level 0.5).
/// let data = [0.9f32, -0.1, 0.4, 2.0, -0.3,
///             0.2, 0.5, -1.5, 0.05, 0.6,
///             -0.7, 0.01, 0.3, -0.2, 1.1];
/// let view = TensorView::new(&data[..], &[3, 5]).unwrap();
/// let config = DataNormConfig { sparse_block_shape: (2, 2), ..Default::default() };
/// let mut mask = Mask::ones([3, 5]);
/// compute_mask("example", view, &config, &mut mask).unwrap();
/// assert_eq!(mask.to_dense_u8(), vec![0, 0, 1, 1, 1,
///                                     0, 0, 1, 1, 1,
///                                     0, 0, 0, 0, 1]);
/// let l2 = DataNormConfig { norm: Norm::L2, ..config };
/// compute_mask("example", view, &l2, &mut mask).unwrap();
/// assert_eq!(mask.to_dense_u8(), vec![1, 1, 1, 1, 0,
///                                     1, 1, 1, 1, 0,
///                                     0, 0, 0, 0, 1]);
/// ```
pub fn compute_mask(
    name: &str,
    data: TensorView<'_>,
    config: &DataNormConfig,
    mask: &mut Mask,
) -> Result<()> {
    compute_mask_with(name, data, config, mask, &mut Scratch::new())
}

/// [`compute_mask`] with caller-owned scratch space, reused between calls (it saves the page
/// faults of a fresh buffer on large inputs; see [`Scratch`]). The answers do not depend on what
/// the scratch held.
///
/// ```
/// use data_sparsifier::norm::{compute_mask_with, DataNormConfig, Scratch};
/// use data_sparsifier::{Mask, TensorView};
/// let mut scratch = Scratch::new();
/// let data = [0.1f32, -0.2, 0.1, 0.3, 5.0, 6.0, -7.0, 8.0];
/// let mut mask = Mask::ones([1, 8]);
/// for _ in 0..2 {
///     let view = TensorView::new(&data[..], &[1, 8]).unwrap();
///     compute_mask_with("row", view, &DataNormConfig::default(), &mut mask, &mut scratch).unwrap();
///     assert_eq!(mask.to_dense_u8(), vec![0, 0, 0, 0, 1, 1, 1, 1]);
/// }
/// ```
pub fn compute_mask_with(
    name: &str,
    data: TensorView<'_>,
    config: &DataNormConfig,
    mask: &mut Mask,
    scratch: &mut Scratch,
) -> Result<()> {
    config.validate(name)?;
    mask.check_shape(name, data.shape())?;
    let Some(hw) = data.rows_cols() else {
        return Err(Error::UnsupportedShape {
            name: name.to_string(),
            shape: data.shape().to_vec(),
        });
    };
    if hw.0 == 0 || hw.1 == 0 {
        return Ok(());
    }
    match data.data() {
        Slice::F32(s) => kernel::run(name, s, hw, config, mask, scratch),
        Slice::F64(s) => kernel::run(name, s, hw, config, mask, scratch),
        Slice::F16(s) => kernel::run(name, s, hw, config, mask, scratch),
        Slice::BF16(s) => kernel::run(name, s, hw, config, mask, scratch),
    }
}

/// The number of blocks pruned: `k = round_half_even(sparsity_level × num_blocks)`, computed in
/// f64 as PyTorch's Python `round` does, clamped to `[0, num_blocks]` (NaN gives 0).
///
/// ```
/// use data_sparsifier::norm::pruned_block_count;
/// // Banker's rounding: a single block at 0.5 is never pruned.
/// assert_eq!([1, 3, 5, 7, 9].map(|n| pruned_block_count(0.5, n)), [0, 2, 2, 4, 4]);
/// assert_eq!(pruned_block_count(0.7, 20), 14); // 0.7 * 20 = 14.000000000000002
/// assert_eq!(pruned_block_count(0.29, 100), 29); // 28.999999999999996
/// assert_eq!(pruned_block_count(1.0, 8), 8);
/// ```
pub fn pruned_block_count(sparsity_level: f64, num_blocks: usize) -> usize {
    let k = (sparsity_level * num_blocks as f64).round_ties_even();
    if k.is_nan() || k <= 0.0 {
        0
    } else if k >= num_blocks as f64 {
        num_blocks
    } else {
        k as usize
    }
}
