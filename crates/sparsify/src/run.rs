//! `sparsify run`: sparsify the selected tensors of a safetensors checkpoint, streaming.
//!
//! # Memory
//!
//! The input is memory-mapped and processed tensor by tensor; the output (and `--masks`) are
//! written as streams into temp files, and all outputs are fsynced before any is put in place
//! (a failed run leaves no new file; see the crate README). Beyond
//! the mapped file (page cache the kernel can evict), the process holds at most:
//!
//! * the mask kernel's scratch for one tensor (a fraction of it: 17% of a 1x4-blocked f32 tensor,
//!   mask included, as `sparsify bench` measures), then
//! * one tensor's bit mask (1 bit per element), a 4 MiB chunk through which its squashed values are
//!   streamed and, for `--masks`, a 1 MiB dense chunk buffer; two 1 MiB write buffers;
//! * a copy of the tensor only if its bytes are not aligned for its dtype in the file (files from
//!   the `safetensors` libraries are aligned);
//! * with `--state`: every sparsified tensor's bit mask until the end (1/32 of the f32 data, 1/16
//!   of f16/bf16), since the state file's header needs them all; unaligned tensors are copied
//!   again while the state file is written.
//!
//! [`RunTotals::peak_alloc_bytes`] reports the measured heap peak. See the crate docs for what
//! this means for file sizes.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use data_sparsifier::compact::{CompactOptions, CompactSink, Encoding};
use data_sparsifier::format::safetensors::{MaskSink, SquashedSink};
use data_sparsifier::format::sharded::{is_index_path, ShardIndex};
use data_sparsifier::format::{parent_dir, AtomicFile, CommitMode, Staged, TensorInfo, TensorSink};
use data_sparsifier::rule::{Registry, Rule};
use data_sparsifier::state::{EntryHeader, StateHeader, StateWriter};
use data_sparsifier::{validate_name, DataKind, Mask};
use serde::Serialize;
use serde_json::Value;

use crate::budget::GlobalReport;
use crate::checkpoint::{sparsify_shape, Input, Shard};
use crate::cli::{FlagPatch, OutputFormat, RuleFlags};
use crate::config_file::{choose_rule, resolve, ConfigFile};
use crate::error::{CliError, Result};
use crate::report::{self, Table};
use data_sparsifier::norm::budget::{GlobalBudget, Normalization};

/// The metadata key added to the output (and `--masks`) file.
pub const METADATA_KEY: &str = "sparsify";

/// What `run` is asked to do.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The input checkpoint.
    pub input: PathBuf,
    /// The output checkpoint.
    pub output: PathBuf,
    /// `--tensors` globs.
    pub tensors: Vec<String>,
    /// `--exclude` globs.
    pub exclude: Vec<String>,
    /// `--rule`, `--set` and the rules' own flags (override the config file's defaults).
    pub flags: RuleFlags,
    /// `--config` file.
    pub config: Option<PathBuf>,
    /// `--masks` output.
    pub masks: Option<PathBuf>,
    /// `--state` output.
    pub state: Option<PathBuf>,
    /// `--format`: dense or compact output.
    pub format: OutputFormat,
    /// `--quantize`: the encoding of a compact output's tables (`None`: their own dtype).
    pub quantize: Option<Encoding>,
    /// `--global-sparsity`: one level over all selected tensors (overrides the config file's).
    pub global_sparsity: Option<f64>,
    /// `--global-normalization` (overrides the config file's).
    pub global_normalization: Option<Normalization>,
    /// Overwrite existing outputs.
    pub force: bool,
}

/// Where chatter goes: stderr, unless quiet.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ui {
    /// No chatter and no progress bar.
    pub quiet: bool,
}

impl Ui {
    /// Prints a line of chatter on stderr.
    pub fn say(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            crate::print_stderr(&format!("{}\n", msg.as_ref()));
        }
    }
    fn progress(&self, total: u64) -> Option<indicatif::ProgressBar> {
        if self.quiet || !std::io::stderr().is_terminal() {
            return None;
        }
        let pb = indicatif::ProgressBar::with_draw_target(
            Some(total),
            indicatif::ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} {wide_msg}",
        ) {
            pb.set_style(style);
        }
        Some(pb)
    }
}

/// One sparsified tensor in the report.
#[derive(Debug, Clone, Serialize)]
pub struct TensorReport {
    /// Its name.
    pub name: String,
    /// Its dtype (safetensors spelling).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its data size.
    pub bytes: u64,
    /// The config it was sparsified with (the rule's keys).
    pub config: Value,
    /// The config in one short phrase (the report's column).
    #[serde(skip)]
    pub summary: String,
    /// Fraction of elements the mask zeroes.
    pub sparsity: f64,
    /// Number of elements the mask zeroes.
    pub zeroed: u64,
    /// Number of elements.
    pub numel: u64,
    /// Whether its bytes were read in place from the map (false: copied, being unaligned).
    pub zero_copy: bool,
    /// Under a global budget: the tensor's blocks, and how many of them the budget pruned (its
    /// resulting level, `pruned_blocks / blocks`, is its config's `sparsity_level`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocks: Option<u64>,
    /// See `blocks`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pruned_blocks: Option<u64>,
    /// The shard file holding it (sharded input only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// Seconds computing the mask.
    pub mask_seconds: f64,
    /// Seconds squashing and writing.
    pub write_seconds: f64,
    /// Total seconds for this tensor.
    pub seconds: f64,
}

/// Totals of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunTotals {
    /// Tensors in the file.
    pub tensors: usize,
    /// Tensors sparsified.
    pub sparsified: usize,
    /// Tensors copied unchanged.
    pub copied: usize,
    /// Size of the input file (of every shard, for sharded input).
    pub bytes: u64,
    /// Files read: 1, or the shards of a sharded input.
    pub shards: usize,
    /// Bytes of sparsified tensors.
    pub sparsified_bytes: u64,
    /// Bytes of tensors copied unchanged.
    pub copied_bytes: u64,
    /// Overall fraction of sparsified elements that were zeroed.
    pub sparsity: f64,
    /// Wall seconds from opening the input to the committed outputs.
    pub seconds: f64,
    /// Input bytes per second over `seconds`, in GB/s.
    pub gbps: f64,
    /// Seconds spent computing masks.
    pub mask_seconds: f64,
    /// Sparsified bytes per mask-computing second, in GB/s.
    pub mask_gbps: f64,
    /// Peak heap bytes allocated during the run (the mapped input not included); null when the
    /// counting allocator is not installed (it is in the binary).
    pub peak_alloc_bytes: Option<u64>,
}

/// The report of a run (what `--report json` prints).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The tool's version.
    pub version: String,
    /// The input file.
    pub input: String,
    /// The output file (the output folder, for sharded input).
    pub output: String,
    /// The index written in the output folder (sharded input only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<String>,
    /// The masks file (folder, for sharded input), if written.
    pub masks: Option<String>,
    /// The state file, if written.
    pub state: Option<String>,
    /// The rule's kind.
    pub rule: String,
    /// The global sparsity budget, if one was applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalReport>,
    /// Every sparsified tensor, in file order.
    pub tensors: Vec<TensorReport>,
    /// Totals.
    pub totals: RunTotals,
}

impl RunReport {
    /// The human-readable table.
    pub fn render(&self) -> String {
        let mut t = Table::new(&["tensor", "shape", "dtype", "config", ">sparsity", ">time"]);
        for r in &self.tensors {
            t.row(vec![
                r.name.clone(),
                report::shape(&r.shape),
                r.dtype.clone(),
                r.summary.clone(),
                report::percent(r.sparsity),
                report::seconds(r.seconds),
            ]);
        }
        let tt = &self.totals;
        let mut out = t.render();
        out.push_str(&format!(
            "total: {} of {} tensors sparsified ({}, {} zeroed), {} copied unchanged ({}); {} in {} = {:.2} GB/s (masks {:.2} GB/s)\n",
            tt.sparsified,
            tt.tensors,
            report::bytes(tt.sparsified_bytes),
            report::percent(tt.sparsity),
            tt.copied,
            report::bytes(tt.copied_bytes),
            report::bytes(tt.bytes),
            report::seconds(tt.seconds),
            tt.gbps,
            tt.mask_gbps,
        ));
        if let Some(g) = &self.global {
            out.push_str(&format!(
                "global budget: {} of all {} blocks of {} tensors pruned ({} blocks; normalization {}; each tensor's level is in its config), threshold in {} pass{} over the data, {}\n",
                report::percent(g.level),
                g.total_blocks,
                g.tensors,
                g.pruned_blocks,
                g.normalization,
                g.rounds,
                if g.rounds == 1 { "" } else { "es" },
                report::seconds(g.seconds),
            ));
        }
        if let Some(p) = tt.peak_alloc_bytes {
            out.push_str(&format!(
                "peak heap memory: {} (the input is memory-mapped, not read into memory)\n",
                report::bytes(p)
            ));
        }
        match &self.index {
            Some(index) => {
                out.push_str(&format!("wrote {} shards and {index}", self.totals.shards))
            }
            None => out.push_str(&format!("wrote {}", self.output)),
        }
        if let Some(m) = &self.masks {
            out.push_str(&format!(", masks {m}"));
        }
        if let Some(s) = &self.state {
            out.push_str(&format!(", state {s}"));
        }
        out.push('\n');
        out
    }
}

/// The JSON stored under [`METADATA_KEY`] in the output's `__metadata__`.
#[derive(Debug, Serialize)]
struct OutputMeta<'a> {
    tool: &'static str,
    version: &'static str,
    sparsifier: &'a str,
    tensors: BTreeMap<&'a str, &'a Value>,
    /// `"compact"` for a compact output (absent for a dense one).
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'static str>,
    /// Each compact table's encoding (absent for a dense output).
    #[serde(skip_serializing_if = "Option::is_none")]
    encodings: Option<BTreeMap<&'a str, String>>,
}

/// A path's canonical form; for a file that does not exist yet, its parent's canonical form joined
/// with its name.
fn canonical(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = std::fs::canonicalize(p) {
        return Some(c);
    }
    Some(
        std::fs::canonicalize(parent_dir(p))
            .ok()?
            .join(p.file_name()?),
    )
}

fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (canonical(a), canonical(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Checks the output paths: distinct from each other and the input, not existing unless `force`,
/// in a directory that exists.
fn check_paths(opts: &RunOptions) -> Result<()> {
    let outs: Vec<(&str, &Path)> = [
        Some(("--output", opts.output.as_path())),
        opts.masks.as_deref().map(|p| ("--masks", p)),
        opts.state.as_deref().map(|p| ("--state", p)),
    ]
    .into_iter()
    .flatten()
    .collect();
    check_outputs(&opts.input, &outs, opts.force)
}

/// Checks output paths (`(flag, path)`): distinct from each other and the input, not existing
/// unless `force`, in a directory that exists.
pub(crate) fn check_outputs(input: &Path, outs: &[(&str, &Path)], force: bool) -> Result<()> {
    let mut roles: Vec<(String, &Path)> = vec![("the input".into(), input)];
    for &(flag, p) in outs {
        for (role, q) in &roles {
            if same_file(q, p) {
                return Err(CliError::SamePath {
                    what_a: role.clone(),
                    what_b: flag.to_string(),
                    path: p.display().to_string(),
                });
            }
        }
        if p.is_dir() {
            return Err(CliError::Usage(format!(
                "{flag} {} is a directory: give a file path",
                p.display()
            )));
        }
        // symlink_metadata: a dangling symlink exists too (`exists()` follows it and says no).
        if std::fs::symlink_metadata(p).is_ok() && !force {
            return Err(CliError::OutputExists {
                path: p.display().to_string(),
            });
        }
        let dir = parent_dir(p);
        if !dir.is_dir() {
            return Err(CliError::Usage(format!(
                "the directory of {flag} {} does not exist: create {} first",
                p.display(),
                dir.display()
            )));
        }
        roles.push((flag.to_string(), p));
    }
    Ok(())
}

/// The name an entry gets in the `--state` file, whose names may not contain '.' or '/'.
pub fn state_name(name: &str) -> String {
    name.replace(['.', '/'], "_")
}

/// What a run does, decided before any tensor is read: the rule, the selection and each
/// selected tensor's config.
struct Plan {
    rule: Box<dyn Rule>,
    /// Indices of the selected tensors, in file order.
    selected: Vec<usize>,
    /// For each tensor of the file, its position in `selected`.
    which: Vec<Option<usize>>,
    /// Each selected tensor's config.
    configs: Vec<Value>,
    /// Each selected tensor's `--state` entry name (empty without `--state`).
    state_names: Vec<String>,
    /// Bytes of the selected tensors.
    sel_bytes: u64,
    /// The global sparsity budget, if asked for (the configs' levels are then its).
    budget: Option<GlobalBudget>,
}

/// Select, then resolve the configs.
fn plan(opts: &RunOptions, input: &Input, source: &str) -> Result<Plan> {
    let file = opts.config.as_ref().map(ConfigFile::load).transpose()?;
    let rule = choose_rule(
        &Registry::builtin(),
        opts.flags.rule.as_deref(),
        file.as_ref(),
    )?;
    let flags: FlagPatch = opts.flags.patch_for(rule.as_ref())?;
    let tensors = input.tensors();
    let selected = crate::select::select(tensors, &opts.tensors, &opts.exclude, source)?;
    let resolved = resolve(
        file.as_ref(),
        rule.as_ref(),
        &flags,
        tensors,
        &selected,
        source,
    )?;
    let state_names = match opts.state {
        Some(_) => state_names(tensors, &selected)?,
        None => Vec::new(),
    };
    let budget = crate::budget::choose(
        opts.global_sparsity,
        opts.global_normalization,
        file.as_ref(),
        rule.as_ref(),
        &flags,
    )?;
    let mut which = vec![None; tensors.len()];
    for (k, &i) in selected.iter().enumerate() {
        which[i] = Some(k);
    }
    Ok(Plan {
        rule,
        sel_bytes: selected.iter().map(|&i| tensors[i].byte_len() as u64).sum(),
        selected,
        which,
        configs: resolved.configs,
        state_names,
        budget,
    })
}

/// The `--state` entry names: valid, and distinct after '.' and '/' become '_'.
fn state_names(tensors: &[TensorInfo], selected: &[usize]) -> Result<Vec<String>> {
    let names: Vec<String> = selected
        .iter()
        .map(|&i| state_name(&tensors[i].name))
        .collect();
    let mut seen = BTreeMap::new();
    for (&i, n) in selected.iter().zip(&names) {
        validate_name(n).map_err(|e| {
            CliError::Selection(format!(
                "--state cannot hold tensor {:?}: {e}",
                tensors[i].name
            ))
        })?;
        if let Some(other) = seen.insert(n.clone(), &tensors[i].name) {
            return Err(CliError::Selection(format!(
                "--state: tensors {other:?} and {:?} both become entry {n:?} ('.' and '/' are replaced by '_'); exclude one of them",
                tensors[i].name
            )));
        }
    }
    Ok(names)
}

/// The plan on stderr, with the rule's warnings.
fn announce(plan: &Plan, input: &Input, source: &str, ui: Ui) {
    let tensors = input.tensors();
    let shards = match input.shards().len() {
        n if input.is_sharded() => format!(" in {n} shards"),
        _ => String::new(),
    };
    ui.say(format!(
        "sparsify: {} holds {} tensors{shards} ({}); sparsifying {} ({}), copying {} unchanged:",
        source,
        tensors.len(),
        report::bytes(input.file_len()),
        plan.selected.len(),
        report::bytes(plan.sel_bytes),
        tensors.len() - plan.selected.len(),
    ));
    if !ui.quiet {
        let mut t = Table::new(&["  tensor", "shape", "dtype", "config"]);
        for (&i, c) in plan.selected.iter().zip(&plan.configs) {
            let e = &tensors[i];
            t.row(vec![
                format!("  {}", e.name),
                report::shape(&e.shape),
                e.dtype.to_string(),
                plan.rule.describe(c),
            ]);
        }
        crate::print_stderr(&t.render());
    }
    // Each distinct warning once, with the tensors it concerns.
    let mut lints: Vec<(String, Vec<&str>)> = Vec::new();
    for (&i, c) in plan.selected.iter().zip(&plan.configs) {
        if let Some(w) = plan.rule.lint(c) {
            match lints.iter_mut().find(|(l, _)| *l == w) {
                Some((_, names)) => names.push(&tensors[i].name),
                None => lints.push((w, vec![&tensors[i].name])),
            }
        }
    }
    for (w, names) in lints {
        let mut shown: Vec<String> = names.iter().take(3).map(|n| format!("{n:?}")).collect();
        if names.len() > 3 {
            shown.push("...".into());
        }
        ui.say(format!(
            "sparsify: warning: {} of the {} selected tensors ({}): {w}",
            names.len(),
            plan.selected.len(),
            shown.join(", ")
        ));
    }
    if input.shards().iter().any(|s| {
        s.ck.metadata()
            .is_some_and(|m| m.contains_key(METADATA_KEY))
    }) {
        ui.say(format!(
            "sparsify: note: the input already has a {METADATA_KEY:?} metadata entry; the output's replaces it"
        ));
    }
}

/// A sink and the path it writes.
type Sinks = Vec<(PathBuf, Box<dyn TensorSink>)>;

/// Where a run writes, per input file (one, or each shard): its output and `--masks` file, and for
/// sharded input the two folders' indexes.
struct Targets {
    /// Per input file: the output file.
    outputs: Vec<PathBuf>,
    /// Per input file: the `--masks` file (sharded: only for a shard with a selected tensor).
    masks: Vec<Option<PathBuf>>,
    /// The output folder's index (sharded input).
    out_index: Option<PathBuf>,
    /// The masks folder's index (sharded input with `--masks`).
    masks_index: Option<PathBuf>,
}

impl Targets {
    /// A single file's: `--output` and `--masks` as given.
    fn single(opts: &RunOptions) -> Targets {
        Targets {
            outputs: vec![opts.output.clone()],
            masks: vec![opts.masks.clone()],
            out_index: None,
            masks_index: None,
        }
    }

    /// A sharded input's: every shard under its own file name in the output folder (and in the
    /// masks folder if it has a selected tensor), with an index of the input's index file name.
    fn sharded(opts: &RunOptions, input: &Input, plan: &Plan) -> Targets {
        let index_name = input
            .index()
            .and_then(|(p, _)| p.file_name())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(data_sparsifier::format::sharded::INDEX_FILE));
        let masks = input
            .shards()
            .iter()
            .map(|sh| {
                let d = opts.masks.as_ref()?;
                let any = sh.range().any(|g| plan.which[g].is_some());
                any.then(|| d.join(&sh.file))
            })
            .collect();
        Targets {
            outputs: input
                .shards()
                .iter()
                .map(|sh| opts.output.join(&sh.file))
                .collect(),
            masks,
            out_index: Some(opts.output.join(&index_name)),
            masks_index: opts.masks.as_ref().map(|d| d.join(&index_name)),
        }
    }

    /// Every file to write, with its flag, for [`check_outputs`].
    fn files<'a>(&'a self, state: Option<&'a Path>) -> Vec<(&'static str, &'a Path)> {
        let mut v: Vec<(&'static str, &Path)> = Vec::new();
        v.extend(self.outputs.iter().map(|p| ("--output", p.as_path())));
        v.extend(self.out_index.iter().map(|p| ("--output", p.as_path())));
        v.extend(
            self.masks
                .iter()
                .flatten()
                .map(|p| ("--masks", p.as_path())),
        );
        v.extend(self.masks_index.iter().map(|p| ("--masks", p.as_path())));
        v.extend(state.map(|p| ("--state", p)));
        v
    }
}

/// The sinks of input file `s` (`--masks`, then the output: their commit order), each over that
/// file's tensors, with metadata naming that file's sparsified tensors.
fn open_sinks(
    opts: &RunOptions,
    input: &Input,
    s: usize,
    targets: &Targets,
    plan: &Plan,
) -> Result<Sinks> {
    let shard: &Shard = &input.shards()[s];
    let tensors = shard.ck.tensors();
    let all = input.tensors();
    let selected: Vec<(usize, &Value)> = plan
        .selected
        .iter()
        .zip(&plan.configs)
        .filter(|(g, _)| shard.range().contains(g))
        .map(|(&g, c)| (g, c))
        .collect();
    let compact = CompactOptions {
        encoding: opts.quantize,
        ..Default::default()
    };
    let meta_json = serde_json::to_string(&OutputMeta {
        tool: "sparsify",
        version: env!("CARGO_PKG_VERSION"),
        sparsifier: plan.rule.name(),
        tensors: selected
            .iter()
            .map(|&(g, c)| (all[g].name.as_str(), c))
            .collect(),
        format: (opts.format == OutputFormat::Compact).then_some("compact"),
        encodings: (opts.format == OutputFormat::Compact).then(|| {
            selected
                .iter()
                .map(|&(g, _)| {
                    let t = &all[g];
                    let e = t.dtype.float().map(|d| compact.encoding_for(d));
                    // A non-float tensor: `--quantize` is refused for it when the run reaches it.
                    let e = e.or(opts.quantize);
                    (
                        t.name.as_str(),
                        e.map_or_else(|| "none".into(), |e| e.to_string()),
                    )
                })
                .collect()
        }),
    })
    .map_err(|e| CliError::Usage(format!("cannot encode the config as JSON: {e}")))?;
    let mut sinks: Sinks = Vec::new();
    if let Some(p) = &targets.masks[s] {
        let infos: Vec<TensorInfo> = selected.iter().map(|&(g, _)| all[g].clone()).collect();
        let meta = BTreeMap::from([(METADATA_KEY.to_string(), meta_json.clone())]);
        let sink = MaskSink::create(p, &infos, Some(&meta)).map_err(written(p))?;
        sinks.push((p.clone(), Box::new(sink)));
    }
    let mut metadata = shard.ck.metadata().cloned().unwrap_or_default();
    metadata.insert(METADATA_KEY.to_string(), meta_json);
    let out_path = &targets.outputs[s];
    let out: Box<dyn TensorSink> = match opts.format {
        OutputFormat::Dense => Box::new(
            SquashedSink::create(out_path, tensors, Some(&metadata)).map_err(written(out_path))?,
        ),
        OutputFormat::Compact => Box::new(
            CompactSink::create(out_path, tensors, Some(&metadata), compact)
                .map_err(written(out_path))?,
        ),
    };
    sinks.push((out_path.clone(), out));
    Ok(sinks)
}

/// The `--state` sink: every selected tensor as an entry of the sparsifier's saved state, with
/// the original data and the mask. Data of more than 2 dims is stored as the 2-D view it was
/// sparsified as; the real shapes are recorded under `extra["sparsify"]`.
fn state_sink(path: &Path, input: &Input, plan: &Plan, source: &str) -> Result<StateWriter> {
    let tensors = input.tensors();
    let mut headers = Vec::with_capacity(plan.selected.len());
    for (k, &i) in plan.selected.iter().enumerate() {
        let t = &tensors[i];
        headers.push(EntryHeader {
            name: plan.state_names[k].as_str(),
            kind: DataKind::Tensor,
            dtype: float_dtype(t)?,
            shape: sparsify_shape(&t.shape),
            parametrized: true,
            config: &plan.configs[k],
            state: &Value::Null,
        });
    }
    let entries = || plan.selected.iter().zip(&plan.state_names);
    let names: serde_json::Map<String, Value> = entries()
        .map(|(&i, n)| (n.clone(), Value::from(tensors[i].name.clone())))
        .collect();
    let real_shapes: serde_json::Map<String, Value> = entries()
        .map(|(&i, n)| (n.clone(), serde_json::json!(tensors[i].shape)))
        .collect();
    let extra = BTreeMap::from([(
        METADATA_KEY.to_string(),
        // Keys in sorted order, as the state file has always had them.
        serde_json::json!({
            "input": source,
            "names": names,
            "shapes": real_shapes,
            "version": env!("CARGO_PKG_VERSION"),
        }),
    )]);
    let offered = plan
        .selected
        .iter()
        .map(|&i| tensors[i].name.clone())
        .collect();
    let header = StateHeader {
        sparsifier: plan.rule.name(),
        mask_update_enabled: true,
        entries: &headers,
        extra: &extra,
    };
    StateWriter::create(path, &header)
        .and_then(|w| w.offered_as(offered))
        .map_err(written(path))
}

fn float_dtype(t: &TensorInfo) -> Result<data_sparsifier::DType> {
    t.dtype
        .float()
        .ok_or_else(|| CliError::Selection(format!("tensor {:?} is not floating point", t.name)))
}

pub(crate) fn written(p: &Path) -> impl Fn(data_sparsifier::Error) -> CliError {
    let s = format!("writing {}", p.display());
    move |e| CliError::lib(s.clone(), e)
}

/// For each tensor of input file `shard` in file order: the rule's mask for a selected one, then
/// every sink.
fn stream(
    input: &Input,
    shard: &Shard,
    plan: &Plan,
    sinks: &mut Sinks,
    pb: Option<&indicatif::ProgressBar>,
    reports: &mut Vec<TensorReport>,
) -> Result<()> {
    let tensors = input.tensors();
    for (i, g) in shard.range().enumerate() {
        let t = &tensors[g];
        match plan.which[g] {
            None => {
                for (p, sink) in sinks.iter_mut() {
                    sink.write_raw(&t.name, shard.ck.bytes(i))
                        .map_err(written(p))?;
                }
            }
            Some(k) => {
                if let Some(pb) = pb {
                    pb.set_message(t.name.clone());
                }
                reports.push(sparsify_one(input, plan, g, k, sinks)?);
            }
        }
        if let Some(pb) = pb {
            pb.inc(t.byte_len() as u64);
        }
    }
    Ok(())
}

/// One selected tensor: its mask by the rule, then every sink.
fn sparsify_one(
    input: &Input,
    plan: &Plan,
    i: usize,
    k: usize,
    sinks: &mut Sinks,
) -> Result<TensorReport> {
    let t = &input.tensors()[i];
    let t0 = Instant::now();
    float_dtype(t)?;
    let data = input.data(i)?;
    let shape = sparsify_shape(&t.shape);
    let view = data
        .view(&shape)
        .map_err(|e| CliError::lib(format!("viewing tensor {:?}", t.name), e))?;
    let mut mask = Mask::ones(shape.clone());
    let config = &plan.configs[k];
    plan.rule
        .update_mask(&t.name, view, config, &mut Value::Null, &mut mask)
        .map_err(|e| rule_error(plan.rule.as_ref(), &t.name, &shape, e))?;
    let t1 = Instant::now();
    for (p, sink) in sinks.iter_mut() {
        sink.write_masked(&t.name, view, &mask)
            .map_err(written(p))?;
    }
    let t2 = Instant::now();
    let zeroed = mask.count_zeroed() as u64;
    Ok(TensorReport {
        name: t.name.clone(),
        dtype: t.dtype.to_string(),
        shape: t.shape.clone(),
        bytes: t.byte_len() as u64,
        config: config.clone(),
        summary: plan.rule.describe(config),
        sparsity: if mask.is_empty() {
            0.0
        } else {
            zeroed as f64 / mask.len() as f64
        },
        zeroed,
        numel: mask.len() as u64,
        zero_copy: !data.is_copy(),
        blocks: None,
        pruned_blocks: None,
        shard: input.is_sharded().then(|| input.locate(i).0.file.clone()),
        mask_seconds: (t1 - t0).as_secs_f64(),
        write_seconds: (t2 - t1).as_secs_f64(),
        seconds: (t2 - t0).as_secs_f64(),
    })
}

/// A rule's error on a tensor. NaN gets the fix in the CLI's terms: the flag of the rule's
/// `nan_policy` key, when it has one.
pub(crate) fn rule_error(
    rule: &dyn Rule,
    name: &str,
    shape: &[usize],
    e: data_sparsifier::Error,
) -> CliError {
    let nan_flag = rule.schema().field("nan_policy").map(|f| match f.flag {
        Some(flag) => format!("--{flag} rank-last"),
        None => "--set nan_policy=rank_last".to_string(),
    });
    match (e, nan_flag) {
        (data_sparsifier::Error::NanInData { index, row, col, .. }, Some(fix)) => CliError::Data(format!(
            "tensor {name:?} contains NaN at flat index {index} (row {row}, col {col} of its {} view): clean the data, or pass {fix} (nan_policy = \"rank_last\" in a --config file) to keep NaN blocks unpruned as PyTorch does",
            report::shape(shape)
        )),
        (e, _) => CliError::lib(format!("sparsifying tensor {name:?}"), e),
    }
}

/// Commits staged outputs, all or nothing; an output that appeared meanwhile is
/// [`CliError::OutputExists`] unless `force`.
pub(crate) fn commit_staged(staged: Staged, force: bool) -> Result<()> {
    let mode = if force {
        CommitMode::Replace
    } else {
        CommitMode::NoClobber
    };
    staged.commit(mode).map_err(|e| match e {
        data_sparsifier::Error::Io { path, source }
            if !force && source.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            CliError::OutputExists { path }
        }
        data_sparsifier::Error::Io { path, source } => CliError::lib(
            format!("writing {path}"),
            data_sparsifier::Error::Io {
                path: path.clone(),
                source,
            },
        ),
        e => CliError::lib("committing the outputs", e),
    })
}

/// Folders a run created, removed again unless it filled them (an empty one after a failed run).
#[derive(Default)]
struct NewDirs(Vec<PathBuf>);

impl NewDirs {
    /// Creates `dir` if it does not exist (its parent must).
    fn ensure(&mut self, flag: &str, dir: &Path) -> Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        std::fs::create_dir(dir).map_err(|e| {
            CliError::Usage(format!(
                "{flag} {}: cannot create the folder ({e}): create it, or give a folder that exists",
                dir.display()
            ))
        })?;
        self.0.push(dir.to_path_buf());
        Ok(())
    }
}

impl Drop for NewDirs {
    fn drop(&mut self) {
        for d in self.0.iter().rev() {
            // Fails, as it should, on a folder the run filled.
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// The folder of a sharded input (the folder given, or the index's).
fn input_dir(input: &Path) -> PathBuf {
    if input.is_dir() {
        return input.to_path_buf();
    }
    parent_dir(input).to_path_buf()
}

/// For a sharded input: `--output` and `--masks` name folders (existing, or new in a folder that
/// exists), other than the input's folder and each other.
fn check_dirs(opts: &RunOptions) -> Result<()> {
    let in_dir = input_dir(&opts.input);
    let dirs: Vec<(&str, &Path)> = [
        Some(("--output", opts.output.as_path())),
        opts.masks.as_deref().map(|p| ("--masks", p)),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut seen: Vec<(String, &Path)> = vec![("the input's folder".into(), in_dir.as_path())];
    for (flag, d) in dirs {
        if d.exists() && !d.is_dir() {
            return Err(CliError::Usage(format!(
                "{flag} {} is a file: with a sharded input ({}), {flag} names a folder for the shards and their index",
                d.display(),
                opts.input.display()
            )));
        }
        let parent = parent_dir(d);
        if !d.exists() && !parent.is_dir() {
            return Err(CliError::Usage(format!(
                "the folder of {flag} {} does not exist: create {} first",
                d.display(),
                parent.display()
            )));
        }
        for (role, q) in &seen {
            if same_file(q, d) {
                return Err(CliError::SamePath {
                    what_a: role.clone(),
                    what_b: flag.to_string(),
                    path: d.display().to_string(),
                });
            }
        }
        seen.push((flag.to_string(), d));
    }
    Ok(())
}

/// A shard index for `files` (tensor, shard file name, bytes), with the input index's metadata,
/// its `total_size` recounted, and what was done under [`METADATA_KEY`]; staged, not in place.
fn stage_index(
    path: &Path,
    input_meta: &serde_json::Map<String, Value>,
    plan: &Plan,
    files: Vec<(String, String, u64)>,
) -> Result<AtomicFile> {
    use std::io::Write;
    let mut meta = input_meta.clone();
    meta.insert(
        "total_size".into(),
        Value::from(files.iter().map(|f| f.2).sum::<u64>()),
    );
    meta.insert(
        METADATA_KEY.into(),
        serde_json::json!({
            "tool": "sparsify",
            "version": env!("CARGO_PKG_VERSION"),
            "sparsifier": plan.rule.name(),
        }),
    );
    let shown = path.display().to_string();
    let index = ShardIndex::new(&shown, meta, files.into_iter().map(|(t, s, _)| (t, s)))
        .map_err(|e| CliError::lib(format!("writing {shown}"), e))?;
    let mut f = AtomicFile::create(path).map_err(written(path))?;
    f.write_all(index.to_json().as_bytes())
        .map_err(|e| CliError::io(path, e))?;
    f.sync().map_err(written(path))?;
    Ok(f)
}

/// Runs `sparsify run`: select → resolve configs → for each input file, each tensor (rule →
/// sinks) → commit every output together → report.
pub fn run(opts: &RunOptions, ui: Ui) -> Result<RunReport> {
    let started = Instant::now();
    let alloc_base = crate::alloc::reset_peak();
    let sharded = opts.input.is_dir() || is_index_path(&opts.input);
    if sharded {
        check_dirs(opts)?;
    } else {
        check_paths(opts)?;
    }
    if let (Some(q), OutputFormat::Dense) = (opts.quantize, opts.format) {
        return Err(CliError::Usage(format!(
            "--quantize {q} needs --format compact (a dense output stores the values as they are)"
        )));
    }
    let input = Input::open(&opts.input)?;
    let source = opts.input.display().to_string();
    let mut plan = plan(opts, &input, &source)?;
    let mut global = None;
    if let Some(budget) = plan.budget {
        for &g in &plan.selected {
            float_dtype(&input.tensors()[g])?;
        }
        ui.say(format!(
            "sparsify: global budget {}: ranking every block of the {} selected tensors (normalization {})",
            report::percent(budget.level()),
            plan.selected.len(),
            budget.normalization()
        ));
        global = Some(crate::budget::apply(
            &budget,
            &input,
            &plan.selected,
            &mut plan.configs,
            plan.rule.as_ref(),
        )?);
    }
    let mut new_dirs = NewDirs::default();
    let targets = if sharded {
        let t = Targets::sharded(opts, &input, &plan);
        new_dirs.ensure("--output", &opts.output)?;
        if let Some(m) = &opts.masks {
            new_dirs.ensure("--masks", m)?;
        }
        let index = input.index().map_or(opts.input.as_path(), |(p, _)| p);
        check_outputs(index, &t.files(opts.state.as_deref()), opts.force)?;
        t
    } else {
        Targets::single(opts)
    };
    announce(&plan, &input, &source, ui);
    let mut state: Option<(PathBuf, Box<dyn TensorSink>)> = match &opts.state {
        Some(p) => Some((p.clone(), Box::new(state_sink(p, &input, &plan, &source)?))),
        None => None,
    };
    let pb = ui.progress(input.tensors().iter().map(|t| t.byte_len() as u64).sum());
    let mut reports = Vec::with_capacity(plan.selected.len());
    let (mut masks_staged, mut outs_staged) = (Staged::default(), Staged::default());
    // (tensor, shard file, bytes) of every output and masks shard, for the indexes.
    let (mut out_files, mut mask_files) = (Vec::new(), Vec::new());
    for (s, shard) in input.shards().iter().enumerate() {
        let mut sinks = open_sinks(opts, &input, s, &targets, &plan)?;
        let with_state = state.is_some();
        if let Some(st) = state.take() {
            sinks.insert(0, st);
        }
        stream(&input, shard, &plan, &mut sinks, pb.as_ref(), &mut reports)?;
        if with_state {
            state = Some(sinks.remove(0));
        }
        let n = sinks.len();
        for (j, (p, sink)) in sinks.into_iter().enumerate() {
            let is_output = j + 1 == n;
            if sharded {
                let files = if is_output {
                    &mut out_files
                } else {
                    &mut mask_files
                };
                for t in sink.stored_tensors().unwrap_or_default() {
                    let bytes = t.byte_len() as u64;
                    files.push((t.name, shard.file.clone(), bytes));
                }
            }
            let staged = sink.finish().map_err(written(&p))?;
            if is_output {
                outs_staged.extend(staged);
            } else {
                masks_staged.extend(staged);
            }
        }
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    // Commit order: state, masks, the masks index, outputs, the output index last (what a
    // reader opens first appears last).
    let mut staged = Staged::default();
    if let Some((p, sink)) = state {
        staged.extend(sink.finish().map_err(written(&p))?);
    }
    staged.extend(masks_staged);
    let empty = serde_json::Map::new();
    let input_meta = input.index().map_or(&empty, |(_, i)| i.metadata());
    if let Some(p) = &targets.masks_index {
        staged.push(stage_index(p, input_meta, &plan, mask_files)?);
    }
    staged.extend(outs_staged);
    if let Some(p) = &targets.out_index {
        staged.push(stage_index(p, input_meta, &plan, out_files)?);
    }
    commit_staged(staged, opts.force)?;
    drop(new_dirs);
    let mut report = finish_report(opts, &input, &targets, &plan, reports, started, alloc_base);
    if let Some((g, selection)) = global {
        for r in &mut report.tensors {
            if let Some(t) = selection.get(&r.name) {
                (r.blocks, r.pruned_blocks) = (Some(t.blocks), Some(t.pruned_blocks));
            }
        }
        report.global = Some(g);
    }
    Ok(report)
}

/// The report of a committed run.
fn finish_report(
    opts: &RunOptions,
    input: &Input,
    targets: &Targets,
    plan: &Plan,
    reports: Vec<TensorReport>,
    started: Instant,
    alloc_base: usize,
) -> RunReport {
    let tensors = input.tensors();
    let seconds = started.elapsed().as_secs_f64();
    let zeroed: u64 = reports.iter().map(|r| r.zeroed).sum();
    let numel: u64 = reports.iter().map(|r| r.numel).sum();
    let mask_seconds: f64 = reports.iter().map(|r| r.mask_seconds).sum();
    let file_bytes = input.file_len();
    let sel_bytes = plan.sel_bytes;
    RunReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        input: opts.input.display().to_string(),
        output: opts.output.display().to_string(),
        index: targets.out_index.as_ref().map(|p| p.display().to_string()),
        masks: opts.masks.as_ref().map(|p| p.display().to_string()),
        state: opts.state.as_ref().map(|p| p.display().to_string()),
        rule: plan.rule.kind().to_string(),
        global: None,
        totals: RunTotals {
            tensors: tensors.len(),
            sparsified: plan.selected.len(),
            copied: tensors.len() - plan.selected.len(),
            bytes: file_bytes,
            shards: input.shards().len(),
            sparsified_bytes: sel_bytes,
            copied_bytes: tensors.iter().map(|t| t.byte_len() as u64).sum::<u64>() - sel_bytes,
            sparsity: if numel == 0 {
                0.0
            } else {
                zeroed as f64 / numel as f64
            },
            seconds,
            gbps: report::gbps(file_bytes, seconds),
            mask_seconds,
            mask_gbps: report::gbps(sel_bytes, mask_seconds),
            peak_alloc_bytes: crate::alloc::is_installed()
                .then(|| crate::alloc::peak().saturating_sub(alloc_base) as u64),
        },
        tensors: reports,
    }
}
