//! The serializable, mergeable states of a global budget: [`Survey`], [`Plan`], [`Tally`] and the
//! result, [`Selection`]. See the [module docs](super) for how they fit together.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::pass::{self, survey_one, tally_one, with_types, HistSpec, INF_KEY};
use super::sketch::Sketch;
use super::{GlobalBudget, Normalization};
use crate::error::{Error, Result};
use crate::mask::Mask;
use crate::norm::scores::Grid;
use crate::norm::select;
use crate::norm::{compute_mask, pruned_block_count, DataNormConfig, NanPolicy, Norm};
use crate::tensor::TensorView;

/// What a budget knows about one tensor: its matrix and block grid, the config fields that decide
/// its scores, and its normalization scale.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TensorInfo {
    name: String,
    rows: usize,
    cols: usize,
    block: (usize, usize),
    norm: Norm,
    nan_policy: NanPolicy,
    blocks: u64,
    scale: f64,
}

/// `(rows, cols)` of data of 0, 1 or 2 dims.
fn rows_cols(name: &str, data: TensorView<'_>) -> Result<(usize, usize)> {
    data.rows_cols().ok_or_else(|| Error::UnsupportedShape {
        name: name.to_string(),
        shape: data.shape().to_vec(),
    })
}

fn describe(rows: usize, cols: usize, block: (usize, usize), norm: Norm, nan: NanPolicy) -> String {
    format!(
        "{rows}x{cols} data in ({}, {}) blocks, norm {norm}, nan_policy {nan}",
        block.0, block.1
    )
}

impl TensorInfo {
    fn describe(&self) -> String {
        describe(self.rows, self.cols, self.block, self.norm, self.nan_policy)
    }

    /// Checks that `data` and `config` are what this tensor was surveyed with.
    fn check(&self, data: TensorView<'_>, config: &DataNormConfig) -> Result<()> {
        config.validate(&self.name)?;
        let (rows, cols) = rows_cols(&self.name, data)?;
        let (block, norm, nan) = (config.sparse_block_shape, config.norm, config.nan_policy);
        if (rows, cols, block, norm, nan)
            != (self.rows, self.cols, self.block, self.norm, self.nan_policy)
        {
            return Err(Error::BudgetMismatch {
                what: format!("tensor {:?}", self.name),
                expected: self.describe(),
                actual: describe(rows, cols, block, norm, nan),
                fix: "pass the same data and config to every stage of one budget",
            });
        }
        Ok(())
    }
}

fn nan_error(name: &str, data: TensorView<'_>, cols: usize) -> Error {
    let index = data.first_nan().unwrap_or(0);
    Error::NanInData {
        name: name.to_string(),
        index,
        row: index / cols.max(1),
        col: index % cols.max(1),
    }
}

fn norm_mismatch(name: &str, norm: Norm, first: &TensorInfo) -> Error {
    Error::BudgetMismatch {
        what: format!("the norm of tensor {name:?}"),
        expected: format!("{} (the norm of {:?})", first.norm, first.name),
        actual: norm.to_string(),
        fix: "a global budget ranks one kind of block score: give every tensor the same norm",
    }
}

fn budget_mismatch(what: &str, expected: String, actual: String) -> Error {
    Error::BudgetMismatch {
        what: what.to_string(),
        expected,
        actual,
        fix: "merge only the states of one budget (the same level, normalization and round)",
    }
}

/// Inserts `item` into `v`, kept sorted by `name`; a name already there is an error.
fn insert_sorted<X>(v: &mut Vec<X>, item: X, name: impl Fn(&X) -> &str) -> Result<()> {
    match v.binary_search_by(|x| name(x).cmp(name(&item))) {
        Ok(_) => Err(Error::DuplicateName {
            name: name(&item).to_string(),
            context: "a global budget",
        }),
        Err(i) => {
            v.insert(i, item);
            Ok(())
        }
    }
}

/// Merges two vectors sorted by `name`; a name in both is an error.
fn merge_sorted<X>(a: Vec<X>, b: Vec<X>, name: impl Fn(&X) -> &str) -> Result<Vec<X>> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => match name(x).cmp(name(y)) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => {
                    return Err(Error::DuplicateName {
                        name: name(x).to_string(),
                        context: "the merged states of a global budget",
                    })
                }
            },
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return Ok(out),
        };
        out.extend(if take_a { a.next() } else { b.next() });
    }
}

/// One tensor of a [`Survey`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SurveyTensor {
    info: TensorInfo,
    /// Blocks sampled (all of them for tensors of at most 16 384 blocks).
    samples: u64,
}

/// Sketch weight units per block: a sampled key stands for `blocks / samples` blocks, kept as an
/// integer in 1/256 blocks so merged sums do not depend on the order of merges.
const WEIGHT_UNIT: u64 = 256;

/// Stage 1 of a global budget: a sample of block scores from every tensor, and each tensor's
/// normalization scale. Cheap: at most 16 384 blocks of each tensor are read.
///
/// Mergeable and serializable: surveys of disjoint tensors (e.g. in other processes) combine with
/// [`Survey::merge`] in any order; [`Survey::plan`] on the merged survey gives every process the
/// same [`Plan`].
///
/// ```
/// use data_sparsifier::norm::budget::{GlobalBudget, Survey};
/// use data_sparsifier::norm::DataNormConfig;
/// use data_sparsifier::random::randn;
/// use data_sparsifier::DType;
/// let budget = GlobalBudget::new(0.5).unwrap();
/// let (a, b) = (randn([64, 32], DType::F32, 1), randn([16, 8], DType::BF16, 2));
/// let cfg = DataNormConfig::default();
/// let mut here = budget.survey();
/// here.add("a", a.view(), &cfg).unwrap();
/// let mut there = budget.survey(); // another process
/// there.add("b", b.view(), &cfg).unwrap();
/// let wire = serde_json::to_string(&there).unwrap();
/// here.merge(serde_json::from_str::<Survey>(&wire).unwrap()).unwrap();
/// assert_eq!(here.len(), 2);
/// assert_eq!(here.total_blocks(), 64 * 8 + 16 * 2);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Survey {
    level: f64,
    normalization: Normalization,
    tensors: Vec<SurveyTensor>,
    sketch: Sketch,
}

impl Survey {
    pub(crate) fn new(budget: &GlobalBudget) -> Survey {
        Survey {
            level: budget.level(),
            normalization: budget.normalization(),
            tensors: Vec::new(),
            sketch: Sketch::default(),
        }
    }

    /// Surveys one tensor: reads a sample of its blocks (scored with `config`'s block shape and
    /// norm; its `sparsity_level` is ignored, the budget's level applies) and computes its scale.
    ///
    /// Errors: an invalid config, data of more than 2 dims, a name already surveyed
    /// ([`Error::DuplicateName`]), a norm other than the first tensor's
    /// ([`Error::BudgetMismatch`]), NaN in a sampled block under [`NanPolicy::Error`]
    /// ([`Error::NanInData`]; NaN elsewhere is found by the tally).
    ///
    /// ```
    /// use data_sparsifier::norm::budget::GlobalBudget;
    /// use data_sparsifier::norm::{DataNormConfig, Norm};
    /// use data_sparsifier::{Error, Tensor};
    /// let t = Tensor::from_vec(vec![1.0f32; 8], [2, 4]).unwrap();
    /// let mut s = GlobalBudget::new(0.5).unwrap().survey();
    /// s.add("t", t.view(), &DataNormConfig::default()).unwrap();
    /// assert!(matches!(s.add("t", t.view(), &DataNormConfig::default()), Err(Error::DuplicateName { .. })));
    /// let l2 = DataNormConfig { norm: Norm::L2, ..Default::default() };
    /// assert!(matches!(s.add("u", t.view(), &l2), Err(Error::BudgetMismatch { .. })));
    /// ```
    pub fn add(&mut self, name: &str, data: TensorView<'_>, config: &DataNormConfig) -> Result<()> {
        config.validate(name)?;
        let (rows, cols) = rows_cols(name, data)?;
        if let Some(first) = self.tensors.first() {
            if first.info.norm != config.norm {
                return Err(norm_mismatch(name, config.norm, &first.info));
            }
        }
        if self.position(name).is_some() {
            return Err(Error::DuplicateName {
                name: name.to_string(),
                context: "a global budget",
            });
        }
        let (bh, bw) = config.sparse_block_shape;
        let g = Grid::new(rows, cols, bh, bw);
        let nb = if rows == 0 || cols == 0 {
            0
        } else {
            g.num_blocks()
        };
        let samples = if nb == 0 {
            Vec::new()
        } else {
            with_types!(data.data(), config.norm, survey_one(&g))
        };
        if config.nan_policy == NanPolicy::Error && samples.iter().any(|s| s.is_nan()) {
            return Err(nan_error(name, data, cols));
        }
        let scale = match self.normalization {
            Normalization::None => 1.0,
            Normalization::Mean => mean_scale(&samples),
        };
        if !samples.is_empty() {
            let w = (nb as u64 * WEIGHT_UNIT / samples.len() as u64).max(1);
            for &s in &samples {
                self.sketch.insert(pass::global_key(s, scale), w);
            }
        }
        let info = TensorInfo {
            name: name.to_string(),
            rows,
            cols,
            block: config.sparse_block_shape,
            norm: config.norm,
            nan_policy: config.nan_policy,
            blocks: nb as u64,
            scale,
        };
        let samples = samples.len() as u64;
        insert_sorted(&mut self.tensors, SurveyTensor { info, samples }, |t| {
            &t.info.name
        })
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.tensors
            .binary_search_by(|t| t.info.name.as_str().cmp(name))
            .ok()
    }

    /// Adds the tensors of another survey of the same budget (another process's, say). The result
    /// does not depend on the order of merges.
    ///
    /// Errors: another level or normalization ([`Error::BudgetMismatch`]), another norm, a tensor
    /// in both ([`Error::DuplicateName`]).
    pub fn merge(&mut self, other: Survey) -> Result<()> {
        if (self.level, self.normalization) != (other.level, other.normalization) {
            return Err(budget_mismatch(
                "merged survey",
                format!(
                    "level {} with normalization {}",
                    self.level, self.normalization
                ),
                format!(
                    "level {} with normalization {}",
                    other.level, other.normalization
                ),
            ));
        }
        if let (Some(a), Some(b)) = (self.tensors.first(), other.tensors.first()) {
            if a.info.norm != b.info.norm {
                return Err(norm_mismatch(&b.info.name, b.info.norm, &a.info));
            }
        }
        let mine = std::mem::take(&mut self.tensors);
        self.tensors = merge_sorted(mine, other.tensors, |t| &t.info.name)?;
        self.sketch.merge(&other.sketch);
        Ok(())
    }

    /// Number of tensors surveyed.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether no tensor was surveyed.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Blocks over all surveyed tensors.
    pub fn total_blocks(&self) -> u64 {
        self.tensors.iter().map(|t| t.info.blocks).sum()
    }

    /// The plan of the first tally round: `k = round_half_even(level × total blocks)` and a key
    /// bracket expected to hold the k-th smallest block, read from the sampled scores with a
    /// margin of four standard errors of the sample quantile.
    pub fn plan(&self) -> Result<Plan> {
        let total = self.total_blocks();
        let k = pruned_block_count(self.level, total as usize) as u64;
        let p = self.level;
        let (mut var, mut max_w) = (0.0f64, 1.0f64);
        for t in &self.tensors {
            let (n, s) = (t.info.blocks as f64, t.samples as f64);
            if t.samples < t.info.blocks && t.samples > 0 {
                var += n * n * p * (1.0 - p) / s;
                max_w = max_w.max(n / s);
            }
        }
        let delta = (4.0 * var.sqrt() + 2.0 * max_w + 8.0) as u64;
        let (lo, hi) = if total == 0 || k == 0 || k == total {
            (0, 0)
        } else {
            let w = self.sketch.total();
            let at = |rank: u64| {
                self.sketch
                    .bucket_at((rank as u128 * w).div_ceil(total as u128))
            };
            let lo = at(k.saturating_sub(delta).max(1)).map_or(0, |b| b.0);
            let hi = at((k + delta).min(total)).map_or(INF_KEY, |b| b.1);
            (lo.min(INF_KEY), hi.min(INF_KEY))
        };
        Ok(Plan {
            level: self.level,
            normalization: self.normalization,
            k,
            total,
            round: 1,
            tensors: self.tensors.iter().map(|t| t.info.clone()).collect(),
            lo,
            hi: hi.max(lo),
            cap: (total / 64).max(1 << 20),
        })
    }
}

/// The mean of the finite sampled scores, summed in sample order (so every process computes the
/// same bits); 1 when it is not a positive number (all-zero data, no data).
fn mean_scale(samples: &[f64]) -> f64 {
    let n = samples.iter().filter(|s| s.is_finite()).count();
    let m: f64 = samples
        .iter()
        .filter(|s| s.is_finite())
        .map(|&s| s / n as f64)
        .sum();
    if m > 0.0 && m.is_finite() {
        m
    } else {
        1.0
    }
}

/// Stage 2's instructions: which tensors, how many blocks to prune (`k`), and the key bracket and
/// histogram a [`Tally`] counts against. Serializable, so a coordinator can send it out; a
/// [`Resolution::Refine`] hands back the plan of another round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    level: f64,
    normalization: Normalization,
    k: u64,
    total: u64,
    round: u32,
    tensors: Vec<TensorInfo>,
    lo: u64,
    hi: u64,
    cap: u64,
}

impl Plan {
    /// An empty tally for this round.
    pub fn tally(&self) -> Tally {
        Tally {
            plan: self.clone(),
            tensors: Vec::new(),
            hist: BTreeMap::new(),
            collected: 0,
        }
    }

    /// Blocks to prune over all tensors: `round_half_even(level × total blocks)`.
    pub fn pruned_blocks(&self) -> u64 {
        self.k
    }

    /// Blocks over all tensors.
    pub fn total_blocks(&self) -> u64 {
        self.total
    }

    /// The tally round this plan is for (1 for a survey's plan).
    pub fn round(&self) -> u32 {
        self.round
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .map(|i| &self.tensors[i])
            .map_err(|_| Error::BudgetMismatch {
                what: format!("tensor {name:?}"),
                expected: "a tensor of the survey".to_string(),
                actual: "a tensor the survey did not see".to_string(),
                fix: "survey every tensor of the budget before tallying or masking it",
            })
    }

    /// Whether the selection needs no block scores (nothing or everything is pruned).
    fn trivial(&self) -> bool {
        self.k == 0 || self.k == self.total
    }
}

/// One tensor of a [`Tally`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TallyTensor {
    name: String,
    below: u64,
    eq_lo: u64,
    inside_count: u64,
    inside: Option<Vec<u64>>,
    eq_hi: u64,
    nan: u64,
}

/// Stage 2 of a global budget: one full read of every tensor, counting its blocks against the
/// plan's bracket and histogram (the "histogram plus counts" selection state).
///
/// Mergeable and serializable: tallies of disjoint tensors for the same [`Plan`] combine with
/// [`Tally::merge`] in any order; [`Tally::resolve`] on the merged tally gives every process the
/// same [`Selection`] (or the same next [`Plan`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tally {
    plan: Plan,
    tensors: Vec<TallyTensor>,
    hist: BTreeMap<u32, u64>,
    collected: u64,
}

/// Shares `need` among candidates counted `counts`, first counts first (tensors in name order):
/// the kernel's tie-budget rule, one level up.
fn share(need: u64, counts: impl Iterator<Item = u64>) -> Vec<u64> {
    select::share(need as usize, counts.map(|c| c as usize))
        .into_iter()
        .map(|c| c as u64)
        .collect()
}

/// The outcome of [`Tally::resolve`].
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// The blocks to prune are known exactly.
    Done(Selection),
    /// The bracket missed the threshold, or held too many blocks to keep their keys: tally again
    /// with this plan (one more read of every tensor). Its bracket holds the threshold for sure:
    /// the keys below or above a bracket that missed, or the histogram bucket (2^-15 of the
    /// bracket's keys or less) of one that overflowed.
    Refine(Plan),
}

/// Rounds after which resolving gives up: a miss costs one round, then each round narrows the
/// key range by at least 2^15 (63-bit keys: at most 5) before its keys fit the cap.
const MAX_ROUNDS: u32 = 12;

impl Tally {
    /// Tallies one tensor: reads all its blocks once (in parallel), unless the plan prunes nothing
    /// or everything.
    ///
    /// Errors: a tensor the survey did not see, or seen with another shape, block shape, norm or
    /// NaN policy ([`Error::BudgetMismatch`]); a tensor tallied twice ([`Error::DuplicateName`]);
    /// NaN under [`NanPolicy::Error`] ([`Error::NanInData`]).
    pub fn add(&mut self, name: &str, data: TensorView<'_>, config: &DataNormConfig) -> Result<()> {
        let info = self.plan.info(name)?.clone();
        info.check(data, config)?;
        if self
            .tensors
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .is_ok()
        {
            return Err(Error::DuplicateName {
                name: name.to_string(),
                context: "a global budget's tally",
            });
        }
        let mut t = TallyTensor {
            name: name.to_string(),
            below: 0,
            eq_lo: 0,
            inside_count: 0,
            inside: Some(Vec::new()),
            eq_hi: 0,
            nan: 0,
        };
        if !self.plan.trivial() && info.blocks > 0 {
            let p = &self.plan;
            let g = Grid::new(info.rows, info.cols, info.block.0, info.block.1);
            let cap = p.cap.saturating_sub(self.collected) as usize;
            let bracket = (p.lo, p.hi);
            let raw = with_types!(
                data.data(),
                info.norm,
                tally_one(&g, info.scale, bracket, cap)
            );
            if info.nan_policy == NanPolicy::Error && raw.nan > 0 {
                return Err(nan_error(name, data, info.cols));
            }
            self.collected += raw.inside.as_ref().map_or(0, |v| v.len() as u64);
            for (b, &c) in raw.hist.iter().enumerate().filter(|(_, &c)| c > 0) {
                *self.hist.entry(b as u32).or_default() += c;
            }
            t = TallyTensor {
                name: name.to_string(),
                below: raw.below,
                eq_lo: raw.eq_lo,
                inside_count: raw.inside_count,
                inside: raw.inside,
                eq_hi: raw.eq_hi,
                nan: raw.nan,
            };
        }
        insert_sorted(&mut self.tensors, t, |t| &t.name)
    }

    /// Adds the tensors of another tally for the same plan (another process's, say). The result
    /// does not depend on the order of merges.
    ///
    /// Errors: a tally for another plan ([`Error::BudgetMismatch`]), a tensor in both
    /// ([`Error::DuplicateName`]).
    pub fn merge(&mut self, other: Tally) -> Result<()> {
        if self.plan != other.plan {
            let d = |p: &Plan| {
                format!(
                    "round {} of level {} over {} tensors",
                    p.round,
                    p.level,
                    p.tensors.len()
                )
            };
            return Err(budget_mismatch(
                "merged tally",
                d(&self.plan),
                d(&other.plan) + " (another plan)",
            ));
        }
        let mine = std::mem::take(&mut self.tensors);
        self.tensors = merge_sorted(mine, other.tensors, |t| &t.name)?;
        for (b, c) in other.hist {
            *self.hist.entry(b).or_default() += c;
        }
        self.collected += other.collected;
        Ok(())
    }

    /// Number of tensors tallied.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether no tensor was tallied.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Finds, from the merged tally of every tensor of the plan, how many blocks of each tensor
    /// are among the plan's `k` lowest (the global order: normalized score, then tensor name,
    /// then the tensor's own order), or the plan of another round when this one cannot tell.
    ///
    /// Errors: a tensor of the plan not tallied ([`Error::BudgetMismatch`]).
    pub fn resolve(&self) -> Result<Resolution> {
        let p = &self.plan;
        if let Some(missing) = p.tensors.iter().find(|t| {
            self.tensors
                .binary_search_by(|x| x.name.cmp(&t.name))
                .is_err()
        }) {
            return Err(Error::BudgetMismatch {
                what: format!("tally of tensor {:?}", missing.name),
                expected: format!("all {} tensors of the plan", p.tensors.len()),
                actual: format!("{} tallied", self.tensors.len()),
                fix: "tally (and merge the tallies of) every tensor of the plan before resolving",
            });
        }
        let ts = &self.tensors;
        let sum = |f: fn(&TallyTensor) -> u64| ts.iter().map(f).sum::<u64>();
        let k = p.k;
        let pruned: Vec<u64> = if k == 0 {
            vec![0; ts.len()]
        } else if k == p.total {
            p.tensors.iter().map(|t| t.blocks).collect()
        } else {
            let numeric: Vec<u64> = p
                .tensors
                .iter()
                .zip(ts)
                .map(|(i, t)| i.blocks - t.nan)
                .collect();
            let n_numeric: u64 = numeric.iter().sum();
            let (below, eq_lo) = (sum(|t| t.below), sum(|t| t.eq_lo));
            let (inside, eq_hi) = (sum(|t| t.inside_count), sum(|t| t.eq_hi));
            if k > n_numeric {
                // The threshold is NaN: every number goes, then NaN blocks in name order.
                let extra = share(k - n_numeric, ts.iter().map(|t| t.nan));
                numeric.iter().zip(extra).map(|(a, b)| a + b).collect()
            } else if k <= below {
                return self.refine((0, p.lo - 1));
            } else if k <= below + eq_lo {
                let extra = share(k - below, ts.iter().map(|t| t.eq_lo));
                ts.iter().zip(extra).map(|(t, e)| t.below + e).collect()
            } else if k <= below + eq_lo + inside {
                if ts.iter().any(|t| t.inside.is_none()) {
                    return self.refine_inside(k - below);
                }
                self.select_inside(k - below - eq_lo)
            } else if p.hi != p.lo && k <= below + eq_lo + inside + eq_hi {
                let extra = share(k - below - eq_lo - inside, ts.iter().map(|t| t.eq_hi));
                ts.iter()
                    .zip(extra)
                    .map(|(t, e)| t.below + t.eq_lo + t.inside_count + e)
                    .collect()
            } else {
                return self.refine((p.hi + 1, INF_KEY));
            }
        };
        Ok(Resolution::Done(Selection::new(p, pruned)))
    }

    /// Per tensor, the blocks pruned when the threshold is the `r`-th smallest key strictly inside
    /// the bracket (every inside key is kept).
    fn select_inside(&self, r: u64) -> Vec<u64> {
        let mut all: Vec<u64> = self
            .tensors
            .iter()
            .flat_map(|t| t.inside.iter().flatten().copied())
            .collect();
        let (_, &mut thr, _) = all.select_nth_unstable(r as usize - 1);
        let lt = |t: &TallyTensor| t.inside.iter().flatten().filter(|&&x| x < thr).count() as u64;
        let eq = |t: &TallyTensor| t.inside.iter().flatten().filter(|&&x| x == thr).count() as u64;
        let n_lt: u64 = self.tensors.iter().map(lt).sum();
        let extra = share(r - n_lt, self.tensors.iter().map(eq));
        self.tensors
            .iter()
            .zip(extra)
            .map(|(t, e)| t.below + t.eq_lo + lt(t) + e)
            .collect()
    }

    /// The plan of the next round when the k-th key is strictly inside the bracket but the
    /// bracket held too many keys to keep: the histogram bucket holding the `r`-th key of the
    /// bracket (`r = k - blocks below it`).
    fn refine_inside(&self, r: u64) -> Result<Resolution> {
        let mut cum = 0u64;
        let bucket = self.hist.iter().find_map(|(&b, &c)| {
            cum += c;
            (cum >= r).then_some(b)
        });
        let Some(b) = bucket else {
            return Err(Error::invalid_state(
                "global budget: the tally's histogram does not hold the threshold (a bug: please report it)",
            ));
        };
        let p = &self.plan;
        self.refine(HistSpec::over(p.lo, p.hi).bucket_keys(b as u64))
    }

    /// The plan of the next round, whose bracket `lo ..= hi` holds the k-th key for sure: below
    /// or above a bracket that missed, or one bucket of a bracket that overflowed.
    fn refine(&self, (lo, hi): (u64, u64)) -> Result<Resolution> {
        let p = &self.plan;
        if p.round >= MAX_ROUNDS {
            return Err(Error::invalid_state(format!(
                "global budget: no threshold after {MAX_ROUNDS} tally rounds (a bug: please report it)"
            )));
        }
        Ok(Resolution::Refine(Plan {
            round: p.round + 1,
            lo,
            hi,
            ..p.clone()
        }))
    }
}

/// One tensor's share of a global budget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorLevel {
    /// The tensor's name.
    pub name: String,
    /// Its blocks.
    pub blocks: u64,
    /// Its blocks among the budget's lowest.
    pub pruned_blocks: u64,
}

impl TensorLevel {
    /// The fraction of its blocks pruned (0 for a tensor without blocks).
    ///
    /// ```
    /// use data_sparsifier::norm::budget::TensorLevel;
    /// let t = TensorLevel { name: "emb".into(), blocks: 8, pruned_blocks: 2 };
    /// assert_eq!(t.level(), 0.25);
    /// ```
    pub fn level(&self) -> f64 {
        if self.blocks == 0 {
            0.0
        } else {
            self.pruned_blocks as f64 / self.blocks as f64
        }
    }
}

/// The result of a global budget: how many blocks of each tensor are pruned. Each tensor's mask
/// is then computed on demand, one tensor at a time ([`Selection::mask`]), by `DataNorm`'s own
/// kernel at the tensor's resulting level.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selection {
    level: f64,
    normalization: Normalization,
    rounds: u32,
    tensors: Vec<TensorInfo>,
    levels: Vec<TensorLevel>,
}

/// A sparsity level at which DataNorm prunes exactly `k` of `n` blocks (`k <= n`).
fn level_for(k: u64, n: u64) -> f64 {
    if n == 0 || k == 0 {
        return 0.0;
    }
    if k == n {
        return 1.0;
    }
    // k/n rounded, times n, is within a few ulps of k < 2^53, so it rounds to k; the loop only
    // guards against a rounding surprise.
    let mut l = k as f64 / n as f64;
    for _ in 0..4 {
        match (pruned_block_count(l, n as usize) as u64).cmp(&k) {
            std::cmp::Ordering::Equal => break,
            std::cmp::Ordering::Less => l = f64::from_bits(l.to_bits() + 1),
            std::cmp::Ordering::Greater => l = f64::from_bits(l.to_bits() - 1),
        }
    }
    l
}

impl Selection {
    fn new(p: &Plan, pruned: Vec<u64>) -> Selection {
        Selection {
            level: p.level,
            normalization: p.normalization,
            rounds: p.round,
            levels: p
                .tensors
                .iter()
                .zip(pruned)
                .map(|(t, k)| TensorLevel {
                    name: t.name.clone(),
                    blocks: t.blocks,
                    pruned_blocks: k,
                })
                .collect(),
            tensors: p.tensors.clone(),
        }
    }

    /// Every tensor's share, in name order.
    pub fn tensors(&self) -> &[TensorLevel] {
        &self.levels
    }

    /// The share of tensor `name`.
    pub fn get(&self, name: &str) -> Option<&TensorLevel> {
        self.levels
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.levels[i])
    }

    /// The budget's level.
    pub fn level(&self) -> f64 {
        self.level
    }

    /// Blocks over all tensors.
    pub fn total_blocks(&self) -> u64 {
        self.levels.iter().map(|t| t.blocks).sum()
    }

    /// Blocks pruned over all tensors: `round_half_even(level × total blocks)`.
    pub fn pruned_blocks(&self) -> u64 {
        self.levels.iter().map(|t| t.pruned_blocks).sum()
    }

    /// Tally rounds it took (each a full read of every tensor): 1 unless the survey's bracket
    /// missed; 0 tallies are read when nothing or everything is pruned, but the count is still 1.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// The DataNorm config that gives tensor `name` its share: `config` with the tensor's
    /// resulting `sparsity_level`. Any DataNorm front end can then compute the mask as it
    /// always does.
    ///
    /// Errors: a tensor not in the selection, or seen with another shape, block shape, norm or NaN
    /// policy ([`Error::BudgetMismatch`]).
    pub fn config_for(
        &self,
        name: &str,
        data: TensorView<'_>,
        config: &DataNormConfig,
    ) -> Result<DataNormConfig> {
        let i = self
            .levels
            .binary_search_by(|t| t.name.as_str().cmp(name))
            .map_err(|_| Error::BudgetMismatch {
                what: format!("tensor {name:?}"),
                expected: "a tensor of the selection".to_string(),
                actual: "a tensor the budget did not see".to_string(),
                fix: "survey and tally every tensor of the budget before masking it",
            })?;
        self.tensors[i].check(data, config)?;
        let t = &self.levels[i];
        Ok(DataNormConfig {
            sparsity_level: level_for(t.pruned_blocks, t.blocks),
            ..config.clone()
        })
    }

    /// Computes tensor `name`'s mask into `mask` (of the data's shape): its share of the lowest
    /// blocks are pruned, and in each the `zeros_per_block` smallest cells are zeroed, exactly as
    /// [`compute_mask`] does at the tensor's resulting level.
    ///
    /// Errors: those of [`Selection::config_for`] and of [`compute_mask`].
    pub fn mask(
        &self,
        name: &str,
        data: TensorView<'_>,
        config: &DataNormConfig,
        mask: &mut Mask,
    ) -> Result<()> {
        let cfg = self.config_for(name, data, config)?;
        compute_mask(name, data, &cfg, mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_for_gives_exactly_k() {
        for n in (1..2000u64).chain([1 << 20, (1 << 32) + 7, 999_999_937]) {
            let ks: Vec<u64> = if n < 2000 {
                (0..=n).collect()
            } else {
                vec![0, 1, n / 3, n / 2, n - 1, n]
            };
            for k in ks {
                assert_eq!(
                    pruned_block_count(level_for(k, n), n as usize) as u64,
                    k,
                    "{k}/{n}"
                );
            }
        }
    }

    /// Runs the tally rounds from `plan` to the end; returns the selection.
    fn finish(mut plan: Plan, tables: &[(String, crate::Tensor, DataNormConfig)]) -> Selection {
        loop {
            let mut tally = plan.tally();
            for (n, t, c) in tables {
                tally.add(n, t.view(), c).unwrap();
            }
            match tally.resolve().unwrap() {
                Resolution::Done(s) => return s,
                Resolution::Refine(p) => plan = p,
            }
        }
    }

    #[test]
    fn refinement_rounds_find_the_same_selection() {
        use crate::random::{randn, Rng};
        use crate::DType;
        // Wide-ranging scores with heavy ties: randn tables, one of integers with many zeros.
        let mut rng = Rng::new(5);
        let ints: Vec<f64> = (0..40_000).map(|_| rng.below(4) as f64).collect();
        let cfg = DataNormConfig {
            nan_policy: NanPolicy::RankLast,
            ..Default::default()
        };
        let tables = vec![
            (
                "a".to_string(),
                randn([300, 256], DType::F32, 1),
                cfg.clone(),
            ),
            (
                "b".to_string(),
                crate::Tensor::from_f64s(&ints, DType::BF16, [40_000]).unwrap(),
                cfg.clone(),
            ),
            ("c".to_string(), randn([64, 48], DType::F64, 2), cfg.clone()),
        ];
        for level in [0.1, 0.5, 0.93] {
            for norm in [Normalization::None, Normalization::Mean] {
                let mut survey = GlobalBudget::new(level)
                    .unwrap()
                    .with_normalization(norm)
                    .survey();
                for (n, t, c) in &tables {
                    survey.add(n, t.view(), c).unwrap();
                }
                let plan = survey.plan().unwrap();
                let want = finish(plan.clone(), &tables);
                assert_eq!(want.rounds(), 1);
                // Brackets that miss below and above, and one too wide to keep its keys.
                let forced = [
                    Plan {
                        lo: 0,
                        hi: 0,
                        ..plan.clone()
                    },
                    Plan {
                        lo: INF_KEY,
                        hi: INF_KEY,
                        ..plan.clone()
                    },
                    Plan {
                        lo: 0,
                        hi: INF_KEY,
                        cap: 1000,
                        ..plan.clone()
                    },
                ];
                for p in forced {
                    let got = finish(p.clone(), &tables);
                    assert!(got.rounds() > 1, "{level} {norm}: {:?}", (p.lo, p.hi));
                    assert_eq!(
                        got.tensors(),
                        want.tensors(),
                        "{level} {norm}: {:?}",
                        (p.lo, p.hi)
                    );
                }
            }
        }
    }

    #[test]
    fn share_goes_to_the_first() {
        assert_eq!(share(5, [2, 0, 4, 3].into_iter()), vec![2, 0, 3, 0]);
        assert_eq!(share(0, [2, 1].into_iter()), vec![0, 0]);
    }
}
