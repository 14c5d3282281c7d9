//! The per-data configuration of [`DataNorm`](super::DataNorm): [`DataNormConfig`], its override
//! type [`DataNormPatch`], and the [`Norm`] and [`NanPolicy`] choices.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::rule::{Field, FieldKind, Schema};
use crate::sparsifier::Config;

/// How a cell is scored: `L1` = `|x|`, `L2` = `x²` (squared, no square root, as in PyTorch).
///
/// A block's score is the **mean** of its cells' scores over the cells that exist. Inside a block,
/// L1 and L2 pick the same cells (`x²` is monotone in `|x|`) except where squaring rounds two
/// different magnitudes to the same value (underflow or overflow in low precision); across blocks
/// they can rank differently.
///
/// ```
/// use data_sparsifier::norm::Norm;
/// assert_eq!("l2".parse::<Norm>().unwrap(), Norm::L2);
/// assert_eq!(Norm::default(), Norm::L1);
/// assert_eq!(Norm::L1.to_string(), "L1");
/// assert_eq!(serde_json::to_string(&Norm::L2).unwrap(), "\"L2\"");
/// assert!("L3".parse::<Norm>().is_err());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Norm {
    /// Mean absolute value.
    #[default]
    L1,
    /// Mean square.
    L2,
}

impl fmt::Display for Norm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Norm::L1 => "L1",
            Norm::L2 => "L2",
        })
    }
}

impl FromStr for Norm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "L1" | "l1" => Ok(Norm::L1),
            "L2" | "l2" => Ok(Norm::L2),
            _ => Err(Error::invalid_config(
                "<input>",
                "norm",
                format!("{s:?}"),
                "\"L1\" or \"L2\"",
            )),
        }
    }
}

/// What to do with NaN in the data.
///
/// * [`NanPolicy::Error`] (the default): a step on data containing NaN is an
///   [`Error::NanInData`] naming the data and the first NaN's position, and the mask is left as it
///   was.
/// * [`NanPolicy::RankLast`]: PyTorch's behaviour. A block containing NaN has a NaN score, which
///   ranks after every number, so it is pruned only when more blocks must be pruned than there are
///   NaN-free blocks; inside a pruned block NaN cells are zeroed after every numeric cell.
///
///   One case can differ from PyTorch: a partial edge block that holds a NaN cell, when
///   `zeros_per_block` is more than its numeric cells but less than the full block size. PyTorch
///   pads edge blocks with NaN before choosing the cells to zero, so its sort may pick a padding
///   NaN (which is then cropped away) before a real NaN cell, for example when the padding comes
///   first in the block's row-major order (a right-edge block of several rows). Here missing cells
///   always count as larger than every real cell, NaN included, so the real NaN cells are zeroed
///   first (the rule of `docs/data-norm.md`).
///
/// ```
/// use data_sparsifier::norm::NanPolicy;
/// assert_eq!(NanPolicy::default(), NanPolicy::Error);
/// assert_eq!(serde_json::to_string(&NanPolicy::RankLast).unwrap(), "\"rank_last\"");
/// assert_eq!("rank_last".parse::<NanPolicy>().unwrap(), NanPolicy::RankLast);
/// assert_eq!(NanPolicy::RankLast.to_string(), "rank_last");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NanPolicy {
    /// NaN in the data is an [`Error::NanInData`].
    #[default]
    Error,
    /// NaN blocks rank last and NaN cells are zeroed last (PyTorch's behaviour).
    RankLast,
}

impl fmt::Display for NanPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NanPolicy::Error => "error",
            NanPolicy::RankLast => "rank_last",
        })
    }
}

impl FromStr for NanPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "error" | "Error" => Ok(NanPolicy::Error),
            "rank_last" | "rank-last" | "RankLast" => Ok(NanPolicy::RankLast),
            _ => Err(Error::invalid_config(
                "<input>",
                "nan_policy",
                format!("{s:?}"),
                "\"error\" or \"rank_last\"",
            )),
        }
    }
}

/// The configuration of one piece of data under [`DataNorm`](super::DataNorm): PyTorch's
/// `sparsity_level`, `sparse_block_shape`, `zeros_per_block`, plus `norm` (per data here, per
/// sparsifier in PyTorch) and a NaN policy.
///
/// * The data (seen as 2-D: rows × cols) is tiled into `sparse_block_shape` blocks from the top-left
///   corner; blocks at the bottom and right edges may be partial.
/// * `k = round_half_even(sparsity_level × number of blocks)` blocks with the lowest score are pruned
///   (see [`pruned_block_count`](super::pruned_block_count)).
/// * In each pruned block the `zeros_per_block` smallest cells are zeroed; `None` means the whole
///   block. N:M sparsity (e.g. 2:4) is `sparsity_level = 1.0`, `sparse_block_shape = (1, M)`,
///   `zeros_per_block = Some(N)`.
///
/// Missing fields take their defaults when deserialized; unknown fields are an error.
///
/// ```
/// use data_sparsifier::norm::{DataNormConfig, Norm, NanPolicy};
/// let c = DataNormConfig::default();
/// assert_eq!((c.sparsity_level, c.sparse_block_shape, c.zeros_per_block), (0.5, (1, 4), None));
/// assert_eq!((c.norm, c.nan_policy), (Norm::L1, NanPolicy::Error));
/// assert_eq!(c.zeros_per_block_effective(), 4);
/// assert!(c.validate("weight").is_ok());
///
/// let c: DataNormConfig = serde_json::from_str(r#"{"sparsity_level": 1.0, "zeros_per_block": 2}"#).unwrap();
/// assert_eq!(c.zeros_per_block, Some(2));
/// assert!(serde_json::from_str::<DataNormConfig>(r#"{"sparsity": 1.0}"#).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataNormConfig {
    /// Fraction of blocks to prune, in `[0, 1]`. Default 0.5.
    pub sparsity_level: f64,
    /// Block shape `(rows, cols)`, both > 0. Default `(1, 4)`.
    pub sparse_block_shape: (usize, usize),
    /// Cells zeroed in each pruned block, at most `rows × cols`; `None` (default) = the whole block.
    pub zeros_per_block: Option<usize>,
    /// Cell score. Default [`Norm::L1`].
    pub norm: Norm,
    /// NaN handling. Default [`NanPolicy::Error`].
    pub nan_policy: NanPolicy,
}

impl Default for DataNormConfig {
    fn default() -> Self {
        DataNormConfig {
            sparsity_level: 0.5,
            sparse_block_shape: (1, 4),
            zeros_per_block: None,
            norm: Norm::L1,
            nan_policy: NanPolicy::Error,
        }
    }
}

impl DataNormConfig {
    /// The schema of [`DataNormConfig`]: its keys as the CLI's flags, the config file and bindings
    /// show them. The flags keep the names `sparsify` has always had (`--block` for
    /// `sparse_block_shape`).
    ///
    /// ```
    /// use data_sparsifier::DataNormConfig;
    /// let s = DataNormConfig::schema();
    /// assert_eq!(s.keys().collect::<Vec<_>>(), ["sparsity_level", "sparse_block_shape", "zeros_per_block", "norm", "nan_policy"]);
    /// assert_eq!(s.defaults(), serde_json::to_value(DataNormConfig::default()).unwrap());
    /// assert_eq!(s.field("sparse_block_shape").unwrap().flag, Some("block"));
    /// ```
    pub fn schema() -> Schema {
        let d = DataNormConfig::default();
        Schema::new(vec![
            Field::new(
                "sparsity_level",
                FieldKind::Float { min: 0.0, max: 1.0 },
                d.sparsity_level,
                "Fraction of blocks to zero, in [0, 1] [default: 0.5]",
            )
            .flag("sparsity-level", "F"),
            Field::new(
                "sparse_block_shape",
                FieldKind::Shape2,
                serde_json::json!([d.sparse_block_shape.0, d.sparse_block_shape.1]),
                "Block shape, rows x cols [default: 1x4]",
            )
            .flag("block", "HxW"),
            Field::new(
                "zeros_per_block",
                FieldKind::Count { nullable: true },
                serde_json::Value::Null,
                "Elements zeroed in each chosen block [default: the whole block]",
            )
            .flag("zeros-per-block", "N"),
            Field::new(
                "norm",
                FieldKind::Choice {
                    choices: &["L1", "L2"],
                    what: "a norm",
                },
                d.norm.to_string(),
                "Block norm used to rank blocks [default: l1]",
            )
            .flag("norm", "l1|l2"),
            Field::new(
                "nan_policy",
                FieldKind::Choice {
                    choices: &["error", "rank_last"],
                    what: "a NaN policy",
                },
                d.nan_policy.to_string(),
                "NaN in the data: fail, or rank NaN blocks last (kept) as PyTorch does [default: error]",
            )
            .flag("nan-policy", "error|rank-last"),
        ])
    }

    /// The config in one short phrase, for reports: `sl 0.8 1x4 zpb 4 L2` (plus `nan:rank_last`
    /// when NaN blocks rank last).
    ///
    /// ```
    /// use data_sparsifier::{DataNormConfig, norm::NanPolicy};
    /// assert_eq!(DataNormConfig::default().describe(), "sl 0.5 1x4 zpb 4 L1");
    /// let c = DataNormConfig { sparsity_level: 0.125, nan_policy: NanPolicy::RankLast, ..Default::default() };
    /// assert_eq!(c.describe(), "sl 0.125 1x4 zpb 4 L1 nan:rank_last");
    /// ```
    pub fn describe(&self) -> String {
        let (h, w) = self.sparse_block_shape;
        let level = format!("{:.4}", self.sparsity_level);
        let level = level.trim_end_matches('0').trim_end_matches('.');
        let mut s = format!(
            "sl {level} {h}x{w} zpb {} {}",
            self.zeros_per_block_effective(),
            self.norm
        );
        if self.nan_policy == NanPolicy::RankLast {
            s.push_str(" nan:rank_last");
        }
        s
    }
}

/// Largest number of cells a block may have (block indices are packed into 32 bits).
const MAX_BLOCK_CELLS: usize = u32::MAX as usize;

impl DataNormConfig {
    /// Checks the config; `name` is the data name (or `"defaults"`) used in the error.
    ///
    /// Errors ([`Error::InvalidConfig`]): `sparsity_level` NaN or outside `[0, 1]` (PyTorch silently
    /// prunes blocks for negative levels; this crate refuses), a zero block dimension, a block of
    /// more than `u32::MAX` cells, `zeros_per_block` larger than the block.
    ///
    /// ```
    /// use data_sparsifier::{norm::DataNormConfig, Error};
    /// let bad = DataNormConfig { sparsity_level: -1.0, ..Default::default() };
    /// let err = bad.validate("emb").unwrap_err();
    /// assert!(matches!(err, Error::InvalidConfig { key: "sparsity_level", .. }));
    /// assert!(err.to_string().contains("emb"));
    /// let bad = DataNormConfig { sparse_block_shape: (2, 2), zeros_per_block: Some(5), ..Default::default() };
    /// assert!(bad.validate("emb").is_err());
    /// ```
    pub fn validate(&self, name: &str) -> Result<()> {
        let sl = self.sparsity_level;
        if !(0.0..=1.0).contains(&sl) {
            return Err(Error::invalid_config(
                name,
                "sparsity_level",
                sl,
                "expected a fraction of blocks in [0, 1] (PyTorch prunes blocks for negative levels; here that is refused)",
            ));
        }
        let (bh, bw) = self.sparse_block_shape;
        if bh == 0 || bw == 0 {
            return Err(Error::invalid_config(
                name,
                "sparse_block_shape",
                format!("({bh}, {bw})"),
                "expected both block dimensions > 0",
            ));
        }
        let cells = bh.checked_mul(bw).filter(|&c| c <= MAX_BLOCK_CELLS);
        let Some(cells) = cells else {
            return Err(Error::invalid_config(
                name,
                "sparse_block_shape",
                format!("({bh}, {bw})"),
                format!("expected a block of at most {MAX_BLOCK_CELLS} cells"),
            ));
        };
        if let Some(z) = self.zeros_per_block {
            if z > cells {
                return Err(Error::invalid_config(
                    name,
                    "zeros_per_block",
                    z,
                    format!(
                        "expected at most the number of cells in a {bh}x{bw} block ({cells}); leave it unset to zero whole blocks"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The number of cells zeroed per pruned block: `zeros_per_block`, or the block size if `None`.
    ///
    /// ```
    /// use data_sparsifier::norm::DataNormConfig;
    /// let c = DataNormConfig { sparse_block_shape: (2, 3), ..Default::default() };
    /// assert_eq!(c.zeros_per_block_effective(), 6);
    /// let c = DataNormConfig { zeros_per_block: Some(2), ..c };
    /// assert_eq!(c.zeros_per_block_effective(), 2);
    /// ```
    pub fn zeros_per_block_effective(&self) -> usize {
        let (bh, bw) = self.sparse_block_shape;
        self.zeros_per_block.unwrap_or(bh.saturating_mul(bw))
    }
}

/// Overrides of [`DataNormConfig`] fields, for [`DataSparsifier::add_data_with`](crate::DataSparsifier::add_data_with):
/// every `Some` field replaces the config's value. Built with the chained setters.
///
/// `zeros_per_block` can only be set to a number: to go back to whole blocks, set it to the block
/// size.
///
/// ```
/// use data_sparsifier::norm::{DataNormConfig, DataNormPatch, Norm};
/// use data_sparsifier::Config;
/// let p = DataNormPatch::new().sparsity_level(0.7).block(2, 3).zeros_per_block(6).norm(Norm::L2);
/// let mut c = DataNormConfig::default();
/// c.apply(&p);
/// assert_eq!((c.sparsity_level, c.sparse_block_shape, c.zeros_per_block, c.norm), (0.7, (2, 3), Some(6), Norm::L2));
/// let p: DataNormPatch = serde_json::from_str(r#"{"norm": "L2"}"#).unwrap();
/// assert_eq!(p, DataNormPatch::new().norm(Norm::L2));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataNormPatch {
    /// New `sparsity_level`.
    pub sparsity_level: Option<f64>,
    /// New `sparse_block_shape`.
    pub sparse_block_shape: Option<(usize, usize)>,
    /// New `zeros_per_block`.
    pub zeros_per_block: Option<usize>,
    /// New `norm`.
    pub norm: Option<Norm>,
    /// New `nan_policy`.
    pub nan_policy: Option<NanPolicy>,
}

impl DataNormPatch {
    /// An empty patch (changes nothing).
    ///
    /// ```
    /// use data_sparsifier::norm::DataNormPatch;
    /// assert_eq!(DataNormPatch::new(), DataNormPatch::default());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets `sparsity_level`.
    ///
    /// ```
    /// # use data_sparsifier::norm::DataNormPatch;
    /// assert_eq!(DataNormPatch::new().sparsity_level(0.9).sparsity_level, Some(0.9));
    /// ```
    pub fn sparsity_level(mut self, sparsity_level: f64) -> Self {
        self.sparsity_level = Some(sparsity_level);
        self
    }
    /// Sets `sparse_block_shape` to `(rows, cols)`.
    ///
    /// ```
    /// # use data_sparsifier::norm::DataNormPatch;
    /// assert_eq!(DataNormPatch::new().block(4, 4).sparse_block_shape, Some((4, 4)));
    /// ```
    pub fn block(mut self, rows: usize, cols: usize) -> Self {
        self.sparse_block_shape = Some((rows, cols));
        self
    }
    /// Sets `sparse_block_shape` from a tuple.
    ///
    /// ```
    /// # use data_sparsifier::norm::DataNormPatch;
    /// assert_eq!(DataNormPatch::new().sparse_block_shape((1, 8)).sparse_block_shape, Some((1, 8)));
    /// ```
    pub fn sparse_block_shape(mut self, shape: (usize, usize)) -> Self {
        self.sparse_block_shape = Some(shape);
        self
    }
    /// Sets `zeros_per_block`.
    ///
    /// ```
    /// # use data_sparsifier::norm::DataNormPatch;
    /// assert_eq!(DataNormPatch::new().zeros_per_block(2).zeros_per_block, Some(2));
    /// ```
    pub fn zeros_per_block(mut self, zeros_per_block: usize) -> Self {
        self.zeros_per_block = Some(zeros_per_block);
        self
    }
    /// Sets `norm`.
    ///
    /// ```
    /// # use data_sparsifier::norm::{DataNormPatch, Norm};
    /// assert_eq!(DataNormPatch::new().norm(Norm::L2).norm, Some(Norm::L2));
    /// ```
    pub fn norm(mut self, norm: Norm) -> Self {
        self.norm = Some(norm);
        self
    }
    /// Sets `nan_policy`.
    ///
    /// ```
    /// # use data_sparsifier::norm::{DataNormPatch, NanPolicy};
    /// assert_eq!(DataNormPatch::new().nan_policy(NanPolicy::RankLast).nan_policy, Some(NanPolicy::RankLast));
    /// ```
    pub fn nan_policy(mut self, nan_policy: NanPolicy) -> Self {
        self.nan_policy = Some(nan_policy);
        self
    }
}

impl Config for DataNormConfig {
    type Patch = DataNormPatch;
    fn apply(&mut self, p: &DataNormPatch) {
        if let Some(v) = p.sparsity_level {
            self.sparsity_level = v;
        }
        if let Some(v) = p.sparse_block_shape {
            self.sparse_block_shape = v;
        }
        if let Some(v) = p.zeros_per_block {
            self.zeros_per_block = Some(v);
        }
        if let Some(v) = p.norm {
            self.norm = v;
        }
        if let Some(v) = p.nan_policy {
            self.nan_policy = v;
        }
    }
}
