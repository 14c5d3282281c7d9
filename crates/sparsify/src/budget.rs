//! `--global-sparsity F` (`global_sparsity = F` in the config file): one sparsity budget over every
//! selected tensor, wired onto the library's [`norm::budget`](data_sparsifier::norm::budget).
//!
//! The selected tensors are handed to [`GlobalBudget::select_from`] one at a time from the
//! memory-mapped input (a sampled survey, then one full read per tally round, usually one), so
//! memory stays per tensor. Each tensor's config then gets its resulting `sparsity_level`
//! ([`Selection::config_for`]: exactly its share `k_i` of the `k = round_half_even(F × total
//! blocks)` lowest blocks), and the run goes on as usual: the rule's own step computes the mask.

use std::time::Instant;

use data_sparsifier::norm::budget::{
    BudgetSource, BudgetTensor, GlobalBudget, Normalization, Selection,
};
use data_sparsifier::norm::DataNormConfig;
use data_sparsifier::rule::Rule;
use serde::Serialize;
use serde_json::Value;

use crate::checkpoint::{sparsify_shape, Input};
use crate::cli::FlagPatch;
use crate::config_file::ConfigFile;
use crate::error::{CliError, Result};

/// What the budget did (the report's `global` entry).
#[derive(Debug, Clone, Serialize)]
pub struct GlobalReport {
    /// The budget's level: the fraction of all blocks pruned.
    pub level: f64,
    /// How scores were compared across tensors.
    pub normalization: String,
    /// Tensors under the budget.
    pub tensors: usize,
    /// Blocks of all of them.
    pub total_blocks: u64,
    /// Blocks pruned: `round_half_even(level × total_blocks)`.
    pub pruned_blocks: u64,
    /// Tally rounds (full reads) the exact threshold took (usually 1).
    pub rounds: u32,
    /// Seconds choosing the blocks (before any mask is computed).
    pub seconds: f64,
}

/// The run's budget, if one is asked for: `--global-sparsity` over the file's `global_sparsity`,
/// and likewise the normalization. Errors: a level outside `[0, 1]`, a rule other than DataNorm,
/// a `sparsity_level` set anywhere as well (the budget decides every level), a normalization
/// without a level.
pub(crate) fn choose(
    level: Option<f64>,
    normalization: Option<Normalization>,
    file: Option<&ConfigFile>,
    rule: &dyn Rule,
    flags: &FlagPatch,
) -> Result<Option<GlobalBudget>> {
    let from_file = file.and_then(|f| f.global_sparsity.map(|(v, _)| v));
    let Some(level) = level.or(from_file) else {
        if normalization.is_some() {
            return Err(CliError::Usage(
                "--global-normalization applies to a global budget: give --global-sparsity F too (or global_sparsity = F in the config file)".into(),
            ));
        }
        return Ok(None);
    };
    let budget = GlobalBudget::new(level).map_err(|_| {
        CliError::Usage(format!(
            "--global-sparsity {level}: give the fraction of all selected blocks to prune, a number in [0, 1]"
        ))
    })?;
    if rule.kind() != "datanorm" {
        return Err(CliError::Usage(format!(
            "a global sparsity budget ranks DataNorm block scores; rule {:?} has none: use --rule datanorm, or drop --global-sparsity",
            rule.kind()
        )));
    }
    if let Some(flag) = flags.origin("sparsity_level") {
        return Err(CliError::Usage(format!(
            "{flag} and the global sparsity budget both set the level: the budget decides each tensor's level; drop {flag}"
        )));
    }
    if let Some((f, (label, line))) =
        file.and_then(|f| Some((f, f.first_setting("sparsity_level")?)))
    {
        return Err(CliError::ConfigFile {
            file: f.path.clone(),
            line,
            message: format!(
                "{label} sets sparsity_level, which a global sparsity budget decides for every tensor: remove it, or --exclude the tensor from the budget"
            ),
        });
    }
    let normalization = normalization
        .or(file.and_then(|f| f.global_normalization.map(|(n, _)| n)))
        .unwrap_or_default();
    Ok(Some(budget.with_normalization(normalization)))
}

/// The selected tensors, read one at a time from the mapped input.
struct Selected<'a> {
    input: &'a Input,
    selected: &'a [usize],
    configs: &'a [DataNormConfig],
}

impl BudgetSource for Selected<'_> {
    fn len(&self) -> usize {
        self.selected.len()
    }
    fn with_tensor(
        &self,
        k: usize,
        f: &mut dyn FnMut(BudgetTensor<'_>) -> data_sparsifier::Result<()>,
    ) -> data_sparsifier::Result<()> {
        let g = self.selected[k];
        let (shard, i) = self.input.locate(g);
        let t = &self.input.tensors()[g];
        let data = data_sparsifier::format::TensorSource::data(shard.ck.source(), i)?;
        let shape = sparsify_shape(&t.shape);
        f(BudgetTensor::new(
            &t.name,
            data.view(&shape)?,
            &self.configs[k],
        ))
    }
}

/// Chooses the budget's blocks over the selected tensors and rewrites each one's config with its
/// resulting level; returns what it did and the selection (each tensor's blocks, for the report).
pub(crate) fn apply(
    budget: &GlobalBudget,
    input: &Input,
    selected: &[usize],
    configs: &mut [Value],
    rule: &dyn Rule,
) -> Result<(GlobalReport, Selection)> {
    let started = Instant::now();
    let tensors = input.tensors();
    let typed: Vec<DataNormConfig> = configs
        .iter()
        .map(|c| {
            serde_json::from_value(c.clone()).map_err(|e| {
                CliError::Usage(format!("the resolved config {c} is not DataNorm's: {e}"))
            })
        })
        .collect::<Result<_>>()?;
    let source = Selected {
        input,
        selected,
        configs: &typed,
    };
    let failed = |e: data_sparsifier::Error| match e {
        data_sparsifier::Error::NanInData { ref name, .. } => {
            let shape = tensors
                .iter()
                .find(|t| &t.name == name)
                .map(|t| sparsify_shape(&t.shape))
                .unwrap_or_default();
            crate::run::rule_error(rule, &name.clone(), &shape, e)
        }
        e => CliError::lib(
            format!(
                "choosing the global budget's blocks over {} tensors",
                selected.len()
            ),
            e,
        ),
    };
    let selection = budget.select_from(&source).map_err(failed)?;
    for (k, c) in configs.iter_mut().enumerate() {
        let mut level = None;
        source
            .with_tensor(k, &mut |t| {
                level = Some(selection.config_for(t.name, t.data, t.config)?);
                Ok(())
            })
            .map_err(failed)?;
        let level = level.map(|cfg| cfg.sparsity_level).unwrap_or_default();
        c["sparsity_level"] = Value::from(level);
    }
    Ok((
        GlobalReport {
            level: budget.level(),
            normalization: budget.normalization().to_string(),
            tensors: selected.len(),
            total_blocks: selection.total_blocks(),
            pruned_blocks: selection.pruned_blocks(),
            rounds: selection.rounds(),
            seconds: started.elapsed().as_secs_f64(),
        },
        selection,
    ))
}
