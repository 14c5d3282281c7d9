//! A global sparsity budget: one level over many tensors. The lowest-scoring blocks across all
//! tables are pruned, `k = round_half_even(level × total blocks)` of them, instead of the same
//! fraction of each table (PyTorch's `global_unstructured` idea, for DataNorm's block scores).
//!
//! Blocks are scored exactly as [`DataNorm`](super::DataNorm) scores them (each tensor with its
//! own block shape; one norm for all), and each score is divided by its tensor's scale (see
//! [`Normalization`]). Then:
//!
//! * **Order.** Blocks rank by normalized score (NaN last, under [`NanPolicy::RankLast`](super::NanPolicy::RankLast)); equal
//!   normalized scores rank by tensor name (byte order), then by the tensor's own DataNorm order
//!   (raw score, then lowest row-major block index). The tensor name, not the order tensors were
//!   added in, decides, so the result is the same however the tensors are spread over processes.
//!   Within one tensor the order is exactly DataNorm's: a single tensor at level `F` gets the mask
//!   [`compute_mask`](super::compute_mask) gives it at `sparsity_level = F`.
//! * **Masks.** Tensor `i` loses its `k_i` lowest blocks, `Σ k_i = k`, and each pruned block its
//!   `zeros_per_block` smallest cells: [`Selection::mask`] runs DataNorm's kernel at the level
//!   `k_i / blocks_i`, so partial pruning, edge blocks and NaN follow DataNorm's rules exactly.
//!
//! **Stages and passes.** Each stage's state is a serializable (serde) value that merges with the
//! same state of other processes, in any order, so tables sharded over processes or machines
//! agree on one threshold through any collective (all-gather the JSON, merge, continue):
//!
//! 1. [`Survey`]: reads a deterministic sample of at most 16 384 blocks per tensor, which gives
//!    each tensor's scale and a weighted key sketch. [`Survey::plan`] turns the merged survey into
//!    a [`Plan`]: `k` and a key bracket expected to hold the k-th key.
//! 2. [`Tally`] (pass 1): one parallel read of every tensor, counting its blocks below, at and
//!    above the bracket, keeping the keys inside it (a small fraction of the blocks), plus a
//!    65 536-bucket histogram of all keys. [`Tally::resolve`] on the merged tally gives the exact
//!    [`Selection`] (how many blocks of each tensor go). If the sampled bracket missed, it gives
//!    the [`Plan`] of one more round instead: the histogram bucket holding the threshold, which
//!    the next tally reads exactly (one more full read; each further round narrows the keys by at
//!    least 2^15, so at most a few even for adversarial data).
//! 3. Masks (pass 2): [`Selection::mask`], one tensor at a time, which is one DataNorm step.
//!
//! So the data is read twice in the common case (the tally, then the DataNorm step that writes
//! each mask), plus the sample. Memory stays per tensor: a tally keeps four counts per tensor, the
//! keys inside the bracket (8 bytes each, at most `max(2^20, total blocks / 64)` per process)
//! and one histogram; a mask is computed and can be written before the next tensor's.
//!
//! ```
//! use data_sparsifier::norm::budget::{BudgetTensor, GlobalBudget, Normalization};
//! use data_sparsifier::norm::DataNormConfig;
//! use data_sparsifier::{Mask, Tensor};
//! // Two tables of different scales, (1, 2) blocks.
//! let small = Tensor::from_vec(vec![0.1f32, 0.1, 0.2, 0.2, 0.3, 0.3, 0.4, 0.4], [2, 4]).unwrap();
//! let big = Tensor::from_vec(vec![10.0f32, 10.0, 20.0, 20.0, 30.0, 30.0, 40.0, 40.0], [2, 4]).unwrap();
//! let cfg = DataNormConfig { sparse_block_shape: (1, 2), ..Default::default() };
//! let tensors = [
//!     BudgetTensor::new("big", big.view(), &cfg),
//!     BudgetTensor::new("small", small.view(), &cfg),
//! ];
//! // Raw magnitudes (PyTorch's global_unstructured): the small table goes first.
//! let raw = GlobalBudget::new(0.5).unwrap().with_normalization(Normalization::None);
//! let sel = raw.select(&tensors).unwrap();
//! assert_eq!((sel.get("small").unwrap().pruned_blocks, sel.get("big").unwrap().pruned_blocks), (4, 0));
//! // Normalized by each table's mean block score (the default): each table loses its lowest half.
//! let sel = GlobalBudget::new(0.5).unwrap().select(&tensors).unwrap();
//! assert_eq!(sel.get("small").unwrap().level(), 0.5);
//! let mut mask = Mask::ones([2, 4]);
//! sel.mask("big", big.view(), &cfg, &mut mask).unwrap();
//! assert_eq!(mask.to_dense_u8(), vec![0, 0, 0, 0, 1, 1, 1, 1]);
//! ```

mod pass;
mod sketch;
mod state;

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use state::{Plan, Resolution, Selection, Survey, Tally, TensorLevel};

use super::DataNormConfig;
use crate::error::{Error, Result};
use crate::tensor::TensorView;

/// How block scores of different tensors are made comparable.
///
/// * [`Normalization::Mean`] (the default): each score is divided by its tensor's mean block
///   score, so a block ranks by how it compares with its own table's typical block. Tables of
///   different scales (embedding tables of other widths, learning rates or initializations; an
///   L1 mean of `0.01` in one table and `3.0` in another) then share the budget by their
///   distributions' shapes rather than their units: tables of the same shape get the same level,
///   and a table keeps more where its scores are more spread. Raw magnitudes would prune the
///   small-scale tables whole before touching the large ones, which is rarely what a budget over
///   tables is for. Under [`Norm::L2`](super::Norm::L2) this is the mean-square (RMS²)
///   normalization. The mean is taken over the tensor's sampled blocks (every block of a tensor
///   of at most 16 384 blocks; otherwise a deterministic spread sample of 16 384, within a
///   fraction of a percent of the full mean), ignoring infinite scores; a tensor whose mean is 0
///   is not scaled.
/// * [`Normalization::None`]: raw scores, as PyTorch's `torch.nn.utils.prune.global_unstructured`
///   ranks raw magnitudes. Right when the tables share one scale.
///
/// ```
/// use data_sparsifier::norm::budget::Normalization;
/// assert_eq!(Normalization::default(), Normalization::Mean);
/// assert_eq!("none".parse::<Normalization>().unwrap(), Normalization::None);
/// assert_eq!(Normalization::Mean.to_string(), "mean");
/// assert_eq!(serde_json::to_string(&Normalization::None).unwrap(), "\"none\"");
/// assert!("rms".parse::<Normalization>().is_err());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// Raw block scores.
    None,
    /// Block scores divided by their tensor's mean block score.
    #[default]
    Mean,
}

impl fmt::Display for Normalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Normalization::None => "none",
            Normalization::Mean => "mean",
        })
    }
}

impl FromStr for Normalization {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "none" | "None" => Ok(Normalization::None),
            "mean" | "Mean" => Ok(Normalization::Mean),
            _ => Err(Error::invalid_config(
                "global budget",
                "normalization",
                format!("{s:?}"),
                "\"none\" or \"mean\"",
            )),
        }
    }
}

/// One tensor of a budget: its name, its data and its DataNorm config (block shape, norm,
/// `zeros_per_block`, NaN policy; the config's `sparsity_level` is ignored, the budget's level
/// applies).
///
/// ```
/// use data_sparsifier::norm::budget::BudgetTensor;
/// use data_sparsifier::norm::DataNormConfig;
/// use data_sparsifier::Tensor;
/// let t = Tensor::from_vec(vec![1.0f32; 4], [4]).unwrap();
/// let cfg = DataNormConfig::default();
/// let b = BudgetTensor::new("t", t.view(), &cfg);
/// assert_eq!(b.name, "t");
/// ```
#[derive(Clone, Copy, Debug)]
pub struct BudgetTensor<'a> {
    /// The tensor's name (unique within the budget).
    pub name: &'a str,
    /// Its data (a view into a tensor, a memory-mapped file, ...).
    pub data: TensorView<'a>,
    /// Its DataNorm config.
    pub config: &'a DataNormConfig,
}

impl<'a> BudgetTensor<'a> {
    /// A budget tensor.
    pub fn new(name: &'a str, data: TensorView<'a>, config: &'a DataNormConfig) -> Self {
        BudgetTensor { name, data, config }
    }
}

/// A global sparsity budget: the level and the [`Normalization`]. [`GlobalBudget::select`] runs
/// every stage in this process; [`GlobalBudget::survey`] starts the staged, mergeable route for
/// tensors spread over processes (see the [module docs](self)).
///
/// ```
/// use data_sparsifier::norm::budget::{GlobalBudget, Normalization, Resolution};
/// use data_sparsifier::norm::DataNormConfig;
/// use data_sparsifier::{random::randn, DType};
/// let (a, b) = (randn([300, 64], DType::F32, 1), randn([100, 32], DType::F16, 2));
/// let cfg = DataNormConfig::default();
/// let budget = GlobalBudget::new(0.75).unwrap();
/// // Staged: survey, plan, tally, resolve (each state could be merged with other processes').
/// let mut survey = budget.survey();
/// survey.add("a", a.view(), &cfg).unwrap();
/// survey.add("b", b.view(), &cfg).unwrap();
/// let mut plan = survey.plan().unwrap();
/// let selection = loop {
///     let mut tally = plan.tally();
///     tally.add("a", a.view(), &cfg).unwrap();
///     tally.add("b", b.view(), &cfg).unwrap();
///     match tally.resolve().unwrap() {
///         Resolution::Done(s) => break s,
///         Resolution::Refine(next) => plan = next,
///     }
/// };
/// assert_eq!(selection.pruned_blocks(), (0.75f64 * (300 * 16 + 100 * 8) as f64).round() as u64);
/// assert_eq!(selection.tensors().len(), 2);
/// assert!(GlobalBudget::new(1.5).is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct GlobalBudget {
    level: f64,
    normalization: Normalization,
}

impl GlobalBudget {
    /// A budget pruning the fraction `level` of all blocks, with the default normalization.
    ///
    /// Errors: `level` NaN or outside `[0, 1]` ([`Error::InvalidConfig`]).
    ///
    /// ```
    /// use data_sparsifier::norm::budget::GlobalBudget;
    /// use data_sparsifier::Error;
    /// let err = GlobalBudget::new(f64::NAN).unwrap_err();
    /// assert!(matches!(err, Error::InvalidConfig { key: "global_sparsity", .. }));
    /// assert!(err.to_string().contains("[0, 1]"));
    /// ```
    pub fn new(level: f64) -> Result<GlobalBudget> {
        if !(0.0..=1.0).contains(&level) {
            return Err(Error::invalid_config(
                "global budget",
                "global_sparsity",
                level,
                "expected a fraction of all blocks in [0, 1]",
            ));
        }
        Ok(GlobalBudget {
            level,
            normalization: Normalization::default(),
        })
    }

    /// The same budget with another normalization.
    ///
    /// ```
    /// use data_sparsifier::norm::budget::{GlobalBudget, Normalization};
    /// let b = GlobalBudget::new(0.5).unwrap().with_normalization(Normalization::None);
    /// assert_eq!(b.normalization(), Normalization::None);
    /// ```
    pub fn with_normalization(self, normalization: Normalization) -> GlobalBudget {
        GlobalBudget {
            normalization,
            ..self
        }
    }

    /// The level.
    pub fn level(&self) -> f64 {
        self.level
    }

    /// The normalization.
    pub fn normalization(&self) -> Normalization {
        self.normalization
    }

    /// An empty survey of this budget (stage 1).
    pub fn survey(&self) -> Survey {
        Survey::new(self)
    }

    /// Runs every stage in this process: survey, tally rounds until resolved (usually one), and
    /// returns the selection; masks are then computed one tensor at a time with
    /// [`Selection::mask`]. Errors: those of [`Survey::add`] and [`Tally::add`].
    pub fn select(&self, tensors: &[BudgetTensor<'_>]) -> Result<Selection> {
        self.select_from(tensors)
    }

    /// [`select`](Self::select) over tensors that a [`BudgetSource`] hands out one at a time,
    /// once per pass: only one tensor need be in memory (or mapped in) at a time.
    ///
    /// ```
    /// use data_sparsifier::norm::budget::{BudgetSource, BudgetTensor, GlobalBudget};
    /// use data_sparsifier::norm::DataNormConfig;
    /// use data_sparsifier::{random::randn, DType, Result};
    /// /// Tables made on demand (a file map, a fetch from a parameter server, ...).
    /// struct Fetch(DataNormConfig);
    /// impl BudgetSource for Fetch {
    ///     fn len(&self) -> usize { 3 }
    ///     fn with_tensor(&self, i: usize, f: &mut dyn FnMut(BudgetTensor<'_>) -> Result<()>) -> Result<()> {
    ///         let t = randn([100 * (i + 1), 16], DType::F32, i as u64);
    ///         f(BudgetTensor::new(["a", "b", "c"][i], t.view(), &self.0))
    ///     }
    /// }
    /// let sel = GlobalBudget::new(0.5).unwrap().select_from(&Fetch(DataNormConfig::default())).unwrap();
    /// assert_eq!(sel.pruned_blocks(), 1200); // of 2400 blocks
    /// ```
    pub fn select_from<S: BudgetSource + ?Sized>(&self, tensors: &S) -> Result<Selection> {
        let mut survey = self.survey();
        for i in 0..tensors.len() {
            tensors.with_tensor(i, &mut |t| survey.add(t.name, t.data, t.config))?;
        }
        let mut plan = survey.plan()?;
        loop {
            let mut tally = plan.tally();
            for i in 0..tensors.len() {
                tensors.with_tensor(i, &mut |t| tally.add(t.name, t.data, t.config))?;
            }
            match tally.resolve()? {
                Resolution::Done(s) => return Ok(s),
                Resolution::Refine(next) => plan = next,
            }
        }
    }
}

/// The tensors of a budget, handed out one at a time, as often as the passes need
/// ([`GlobalBudget::select_from`]); a slice of [`BudgetTensor`]s is one.
pub trait BudgetSource {
    /// Number of tensors.
    fn len(&self) -> usize;
    /// Whether there is none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Calls `f` with tensor `i` (`i < len()`); returns `f`'s error, or the source's own.
    fn with_tensor(
        &self,
        i: usize,
        f: &mut dyn FnMut(BudgetTensor<'_>) -> Result<()>,
    ) -> Result<()>;
}

impl BudgetSource for [BudgetTensor<'_>] {
    fn len(&self) -> usize {
        <[BudgetTensor<'_>]>::len(self)
    }
    fn with_tensor(
        &self,
        i: usize,
        f: &mut dyn FnMut(BudgetTensor<'_>) -> Result<()>,
    ) -> Result<()> {
        f(self[i])
    }
}
