//! Command-line arguments (clap) and their translation into the commands' options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use data_sparsifier::DType;

use data_sparsifier::norm::{DataNormPatch, NanPolicy, Norm};

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
    /// List the tensors of a safetensors file with their sizes and fractions of zeros.
    Inspect(InspectArgs),
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

/// The sparsifier config flags.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigFlags {
    /// Fraction of blocks to zero, in [0, 1] [default: 0.5].
    #[arg(long, value_name = "F", value_parser = parse_level)]
    pub sparsity_level: Option<f64>,
    /// Block shape, rows x cols [default: 1x4].
    #[arg(long, value_name = "HxW", value_parser = parse_block)]
    pub block: Option<(usize, usize)>,
    /// Elements zeroed in each chosen block [default: the whole block].
    #[arg(long, value_name = "N")]
    pub zeros_per_block: Option<usize>,
    /// Block norm used to rank blocks [default: l1].
    #[arg(long, value_name = "l1|l2", value_parser = parse_norm)]
    pub norm: Option<Norm>,
    /// NaN in the data: fail, or rank NaN blocks last (kept) as PyTorch does [default: error].
    #[arg(long, value_name = "error|rank-last", value_parser = parse_nan)]
    pub nan_policy: Option<NanPolicy>,
}

impl ConfigFlags {
    /// The flags as a config patch.
    pub fn patch(&self) -> DataNormPatch {
        DataNormPatch {
            sparsity_level: self.sparsity_level,
            sparse_block_shape: self.block,
            zeros_per_block: self.zeros_per_block,
            norm: self.norm,
            nan_policy: self.nan_policy,
        }
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
    /// The input safetensors file.
    #[arg(value_name = "INPUT.safetensors")]
    pub input: PathBuf,
    /// The output safetensors file (never the input; not overwritten without --force).
    #[arg(short, long, value_name = "OUTPUT.safetensors")]
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
    pub config: ConfigFlags,
    /// Also write each mask as a U8 tensor (1 keep, 0 zero) of the same name and shape.
    #[arg(long, value_name = "MASKS.safetensors")]
    pub masks: Option<PathBuf>,
    /// Also write the sparsifier's state (original data + masks + configs) for DataNormSparsifier::load_state.
    #[arg(long, value_name = "STATE.safetensors")]
    pub state: Option<PathBuf>,
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

/// `sparsify inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The safetensors file.
    #[arg(value_name = "FILE.safetensors")]
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
    pub config: ConfigFlags,
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

fn parse_level(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number: give a fraction in [0, 1], e.g. 0.8"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{v} is outside [0, 1]: give a fraction, e.g. 0.8"));
    }
    Ok(v)
}

fn parse_block(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("{s:?} is not a block shape: write rows x cols, e.g. 1x4 or 4x4");
    let (h, w) = s.trim().split_once(['x', 'X', ',']).ok_or_else(bad)?;
    let h: usize = h.trim().parse().map_err(|_| bad())?;
    let w: usize = w.trim().parse().map_err(|_| bad())?;
    if h == 0 || w == 0 {
        return Err(format!("{s:?}: both block dimensions must be at least 1"));
    }
    Ok((h, w))
}

fn parse_norm(s: &str) -> Result<Norm, String> {
    s.trim()
        .parse::<Norm>()
        .map_err(|_| format!("{s:?} is not a norm: use l1 or l2"))
}

fn parse_nan(s: &str) -> Result<NanPolicy, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "error" => Ok(NanPolicy::Error),
        "rank-last" | "rank_last" => Ok(NanPolicy::RankLast),
        _ => Err(format!("{s:?} is not a NaN policy: use error or rank-last")),
    }
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    s.trim()
        .parse::<DType>()
        .map_err(|_| format!("{s:?} is not a dtype: use f32, f16, bf16 or f64"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_parsers() {
        assert_eq!(parse_block("1x4"), Ok((1, 4)));
        assert_eq!(parse_block("4X4"), Ok((4, 4)));
        assert!(parse_block("0x4").is_err());
        assert!(parse_block("4").is_err());
        assert!(parse_level("1.5").is_err());
        assert!(parse_level("nan").is_err());
        assert_eq!(parse_level("0.25"), Ok(0.25));
        assert_eq!(parse_norm("L2"), Ok(Norm::L2));
        assert!(parse_norm("l3").is_err());
        assert_eq!(parse_nan("rank-last"), Ok(NanPolicy::RankLast));
        assert_eq!(parse_dtype("bf16"), Ok(DType::BF16));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
