//! Command-line arguments (clap) and their translation into the commands' options.

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Args, Parser, Subcommand, ValueEnum};
use data_sparsifier::norm::budget::Normalization;
use data_sparsifier::rule::{Field, Registry, Rule};
use data_sparsifier::DType;
use serde_json::Value;

use crate::config_file::keys_hint;
use crate::error::CliError;

/// Sparsify safetensors checkpoints and embedding tables with the block-norm data sparsifier.
#[derive(Debug, Parser)]
#[command(name = "sparsify", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

const EXAMPLES: &str = "Examples:
  sparsify demo
  sparsify inspect model.safetensors
  sparsify run model.safetensors -o model.sparse.safetensors --sparsity-level 0.8 --block 1x4 --norm l2
  sparsify run model.safetensors -o out.safetensors --tensors 'emb_l.*' --exclude 'emb_l.0.*' --masks masks.safetensors
  sparsify run model.safetensors -o out.safetensors --config sparsify.toml --state state.safetensors
  sparsify bench --rows 1000000 --cols 64 --dtype bf16 --report json

Every error is one line on stderr starting with 'error:', and exit status 2.";

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sparsify tensors of a safetensors file into a new safetensors file.
    Run(RunArgs),
    /// List the tensors of a safetensors file with their sizes and fractions of zeros (and each
    /// compact table's encoding, density, bytes and ratio to dense).
    Inspect(InspectArgs),
    /// Write the dense safetensors file of a compact one (`run --format compact`).
    Expand(ExpandArgs),
    /// Time the library's step and squash on a generated table.
    Bench(BenchArgs),
    /// Make a DLRM-like checkpoint, sparsify it, and report (no arguments needed).
    Demo(DemoArgs),
}

/// How the final report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum ReportFormat {
    /// A table on stdout.
    #[default]
    Text,
    /// One JSON object on stdout (the human text goes to stderr).
    Json,
}

/// The rule and config flags: `--rule`, `--set KEY=VALUE` (repeatable) and the dedicated flags
/// the registered rules' schemas declare (`--sparsity-level`, `--block`, ...). Built from the
/// [`Registry`] at startup, so a rule registered in the library gets its flags with no edit
/// here; a value is parsed (and range-checked) by its field's parser.
#[derive(Debug, Clone, Default)]
pub struct RuleFlags {
    /// `--rule NAME`.
    pub rule: Option<String>,
    /// `--set KEY=VALUE`, as given.
    pub sets: Vec<String>,
    /// The dedicated flags given: (config key, flag name, value), in command-line order.
    pub flags: Vec<(String, String, Value)>,
}

/// The dedicated flags of every registered rule: (config key, flag, field), each flag once.
fn flag_fields() -> Vec<Field> {
    let registry = Registry::builtin();
    let mut out: Vec<Field> = Vec::new();
    for kind in registry.kinds() {
        let Ok(rule) = registry.create(kind) else {
            continue;
        };
        for f in rule.schema().fields() {
            if f.flag.is_some() && !out.iter().any(|o| o.flag == f.flag) {
                out.push(f.clone());
            }
        }
    }
    out
}

impl clap::Args for RuleFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let kinds: Vec<String> = Registry::builtin().kinds().map(String::from).collect();
        let mut cmd = cmd
            .arg(
                Arg::new("rule")
                    .long("rule")
                    .value_name("NAME")
                    .help(format!(
                        "The mask rule: {} [default: {}]",
                        kinds.join(", "),
                        Registry::DEFAULT
                    )),
            )
            .arg(
                Arg::new("set")
                    .long("set")
                    .value_name("KEY=VALUE")
                    .action(ArgAction::Append)
                    .help("Set a config key of the rule (repeatable), e.g. --set threshold=0.1"),
            );
        for f in flag_fields() {
            let flag = f.flag.unwrap_or(f.key);
            let parse = f.clone();
            cmd = cmd.arg(
                Arg::new(f.key)
                    .long(flag)
                    .value_name(f.value_name)
                    .help(f.doc)
                    .value_parser(move |s: &str| parse.parse_text(s)),
            );
        }
        cmd
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl clap::FromArgMatches for RuleFlags {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Vec::new();
        for f in flag_fields() {
            if let Some(v) = m.get_one::<Value>(f.key) {
                let flag = f.flag.unwrap_or(f.key);
                flags.push((f.key.to_string(), format!("--{flag}"), v.clone()));
            }
        }
        Ok(RuleFlags {
            rule: m.get_one::<String>("rule").cloned(),
            sets: m
                .get_many::<String>("set")
                .map(|v| v.cloned().collect())
                .unwrap_or_default(),
            flags,
        })
    }
    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

/// The flags as a config patch of one rule, and which flag set each key.
#[derive(Debug, Clone)]
pub struct FlagPatch {
    patch: Value,
    origin: Vec<(String, String)>,
}

impl Default for FlagPatch {
    fn default() -> Self {
        FlagPatch {
            patch: Value::Object(Default::default()),
            origin: Vec::new(),
        }
    }
}

impl FlagPatch {
    /// The patch (a JSON object).
    pub fn patch(&self) -> &Value {
        &self.patch
    }
    /// The flag that set `key` (`--block`, `--set threshold`), if one did.
    pub fn origin(&self, key: &str) -> Option<&str> {
        self.origin
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, f)| f.as_str())
    }
    fn set(&mut self, key: &str, flag: String, value: Value) {
        if let Value::Object(m) = &mut self.patch {
            m.insert(key.to_string(), value);
        }
        self.origin.push((key.to_string(), flag));
    }
}

impl RuleFlags {
    /// The flags as a patch of `rule`'s config: a flag of another rule, an unknown `--set` key
    /// or a bad `--set` value is a usage error naming the flag.
    pub fn patch_for(&self, rule: &dyn Rule) -> Result<FlagPatch, CliError> {
        let schema = rule.schema();
        let mut out = FlagPatch::default();
        for (key, flag, v) in &self.flags {
            if schema.field(key).is_none() {
                return Err(CliError::Usage(format!(
                    "{flag} is not a setting of rule {}; its keys are {} (set them with --set KEY=VALUE)",
                    rule.kind(),
                    keys_hint(schema)
                )));
            }
            out.set(key, flag.clone(), v.clone());
        }
        for s in &self.sets {
            let Some((key, text)) = s.split_once('=') else {
                return Err(CliError::Usage(format!(
                    "--set {s:?}: write KEY=VALUE, e.g. --set threshold=0.1"
                )));
            };
            let key = key.trim();
            let flag = format!("--set {key}");
            let value = match schema.field(key) {
                Some(f) => f.parse_text(text),
                None if schema.is_open() => Ok(
                    serde_json::from_str(text).unwrap_or_else(|_| Value::from(text.to_string()))
                ),
                None => Err(format!(
                    "rule {} has no key {key:?}; its keys are {}",
                    rule.kind(),
                    keys_hint(schema)
                )),
            }
            .map_err(|e| CliError::Usage(format!("{flag}: {e}")))?;
            out.set(key, flag, value);
        }
        Ok(out)
    }
}

/// `sparsify run`.
#[derive(Debug, Args)]
#[command(
    after_help = "Selection: by default every floating-point tensor with 2 dims; --tensors \
names tensors (any rank) instead, --exclude removes; globs match whole names and '*' matches '.'; \
a pattern that is exactly a tensor's name selects just that tensor.\n\
Config precedence, lowest first: built-in defaults, the --config file's [defaults], flags, the \
file's [tensors.\"GLOB\"] overrides, its [tensors.\"NAME\"] overrides."
)]
pub struct RunArgs {
    /// The input: a safetensors file, or a sharded checkpoint (its folder, or its
    /// `*.safetensors.index.json`).
    #[arg(value_name = "INPUT")]
    pub input: PathBuf,
    /// The output safetensors file (never the input; not overwritten without --force). For a
    /// sharded input: a folder (created if missing) that receives the same shards and a new index.
    #[arg(short, long, value_name = "OUTPUT")]
    pub output: PathBuf,
    /// Sparsify the tensors matching this glob (repeatable).
    #[arg(long = "tensors", value_name = "GLOB")]
    pub tensors: Vec<String>,
    /// Do not sparsify the tensors matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// The config file.
    #[arg(
        long = "config",
        value_name = "FILE.toml",
        help = "TOML file with [defaults] and per-tensor [tensors.\"NAME-OR-GLOB\"] configs"
    )]
    pub config_file: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub config: RuleFlags,
    /// One sparsity budget over all selected tensors: prune this fraction of all their blocks,
    /// the lowest-scoring wherever they are; each tensor's level follows (datanorm rule; see
    /// docs/global-budget.md). Also `global_sparsity = F` in the --config file.
    #[arg(long, value_name = "F")]
    pub global_sparsity: Option<f64>,
    /// How --global-sparsity compares block scores across tensors: `mean` (each over its
    /// tensor's mean block score, the default) or `none` (raw scores, as PyTorch's
    /// global_unstructured).
    #[arg(long, value_name = "mean|none", value_parser = parse_normalization)]
    pub global_normalization: Option<Normalization>,
    /// Also write each mask as a U8 tensor (1 keep, 0 zero) of the same name and shape (for a
    /// sharded input: a folder of mask shards and their index).
    #[arg(long, value_name = "MASKS")]
    pub masks: Option<PathBuf>,
    /// Also write the sparsifier's state (original data + masks + configs) for DataNormSparsifier::load_state.
    #[arg(long, value_name = "STATE.safetensors")]
    pub state: Option<PathBuf>,
    /// The output's form: dense (zeros written out) or compact (kept blocks, block mask, row
    /// remap; see docs/compact-format.md; `sparsify expand` makes it dense again).
    #[arg(long, value_enum, default_value_t)]
    pub format: OutputFormat,
    /// With --format compact: store the kept values as rowwise int8 (f32 scale and bias per row)
    /// or int4 (f16 scale and bias) codes over the kept cells; pruned cells stay exactly 0.
    #[arg(long, value_enum, value_name = "CODE")]
    pub quantize: Option<Quantize>,
    /// Overwrite existing output files.
    #[arg(long)]
    pub force: bool,
    /// Report format.
    #[arg(long, value_enum, default_value_t)]
    pub report: ReportFormat,
    /// No progress bar and no chatter on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// The form of `run`'s output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum OutputFormat {
    /// A dense safetensors file, `mask · data` (what PyTorch loads as it is).
    #[default]
    Dense,
    /// A compact safetensors file: each sparsified table's kept blocks only.
    Compact,
}

/// `--quantize`: the rowwise codes of a compact output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Quantize {
    /// 8-bit codes, f32 scale and bias per row.
    Int8,
    /// 4-bit codes, f16 scale and bias per row.
    Int4,
    /// 2-bit codes, f16 scale and bias per row.
    Int2,
}

impl From<Quantize> for data_sparsifier::compact::Encoding {
    fn from(q: Quantize) -> Self {
        match q {
            Quantize::Int8 => data_sparsifier::compact::Encoding::Int8,
            Quantize::Int4 => data_sparsifier::compact::Encoding::Int4,
            Quantize::Int2 => data_sparsifier::compact::Encoding::Int2,
        }
    }
}

/// `sparsify expand`.
#[derive(Debug, Args)]
pub struct ExpandArgs {
    /// The compact safetensors file.
    #[arg(value_name = "COMPACT.safetensors")]
    pub input: PathBuf,
    /// The dense safetensors file to write (never the input; not overwritten without --force).
    #[arg(short, long, value_name = "OUTPUT.safetensors")]
    pub output: PathBuf,
    /// Overwrite an existing output file.
    #[arg(long)]
    pub force: bool,
    /// No chatter on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// `sparsify inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A safetensors file, or a sharded checkpoint (its folder, or its `*.safetensors.index.json`).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Report format.
    #[arg(long, value_enum, default_value_t)]
    pub report: ReportFormat,
}

/// `sparsify bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Table rows.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: usize,
    /// Table columns.
    #[arg(long, default_value_t = 64)]
    pub cols: usize,
    /// Element type: f32, f16, bf16 or f64.
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    pub dtype: DType,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub config: RuleFlags,
    /// Timed repeats (the medians are reported).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeat: u64,
    /// Seed of the generated table.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Report format.
    #[arg(long, value_enum, default_value_t)]
    pub report: ReportFormat,
}

/// `sparsify demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Directory for the demo's files [default: a new temp directory].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Overwrite the demo's files in --out.
    #[arg(long)]
    pub force: bool,
    /// Seed of the generated checkpoint.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Scale of the embedding tables' row counts (for quick tests).
    #[arg(long, default_value_t = 1.0, hide = true)]
    pub scale: f64,
    /// Report format.
    #[arg(long, value_enum, default_value_t)]
    pub report: ReportFormat,
    /// No chatter on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    s.trim()
        .parse::<DType>()
        .map_err(|_| format!("{s:?} is not a dtype: use f32, f16, bf16 or f64"))
}

fn parse_normalization(s: &str) -> std::result::Result<Normalization, String> {
    s.parse().map_err(|_| {
        format!(
            "{s:?}: give mean (each score over its tensor's mean block score) or none (raw scores)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_parsers() {
        let schema = data_sparsifier::DataNormConfig::schema();
        let parse = |k: &str, s: &str| schema.field(k).unwrap().parse_text(s);
        assert_eq!(
            parse("sparse_block_shape", "1x4"),
            Ok(serde_json::json!([1, 4]))
        );
        assert_eq!(
            parse("sparse_block_shape", "4X4"),
            Ok(serde_json::json!([4, 4]))
        );
        assert!(parse("sparse_block_shape", "0x4").is_err());
        assert!(parse("sparse_block_shape", "4").is_err());
        assert!(parse("sparsity_level", "1.5").is_err());
        assert!(parse("sparsity_level", "nan").is_err());
        assert_eq!(parse("sparsity_level", "0.25"), Ok(serde_json::json!(0.25)));
        assert_eq!(parse("norm", "L2"), Ok(serde_json::json!("L2")));
        assert_eq!(parse("norm", "l2"), Ok(serde_json::json!("L2")));
        assert!(parse("norm", "l3").unwrap_err().contains("use l1 or l2"));
        assert_eq!(
            parse("nan_policy", "rank-last"),
            Ok(serde_json::json!("rank_last"))
        );
        assert!(parse("nan_policy", "x")
            .unwrap_err()
            .contains("use error or rank-last"));
        assert_eq!(parse_dtype("bf16"), Ok(DType::BF16));
    }

    #[test]
    fn flags_map_through_the_schema() {
        let cli = Cli::try_parse_from([
            "sparsify",
            "run",
            "in",
            "-o",
            "out",
            "--block",
            "2x2",
            "--set",
            "norm=l2",
            "--sparsity-level",
            "0.8",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else {
            panic!()
        };
        let rule = Registry::builtin().create("datanorm").unwrap();
        let p = a.config.patch_for(rule.as_ref()).unwrap();
        assert_eq!(
            p.patch(),
            &serde_json::json!({"sparse_block_shape": [2, 2], "sparsity_level": 0.8, "norm": "L2"})
        );
        assert_eq!(p.origin("sparse_block_shape"), Some("--block"));
        assert_eq!(p.origin("norm"), Some("--set norm"));
        let magnitude = Registry::builtin().create("magnitude").unwrap();
        let e = a
            .config
            .patch_for(magnitude.as_ref())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is not a setting of rule magnitude") && e.contains("threshold"),
            "{e}"
        );
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
