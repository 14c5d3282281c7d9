//! # sparsify
//!
//! The command-line tool over safetensors checkpoints: a thin layer over the `data-sparsifier`
//! library, which does all the sparsifying. It is a library as well as a binary so that tests can
//! call every command in-process.
//!
//! ```text
//! sparsify run INPUT.safetensors -o OUTPUT.safetensors [--tensors GLOB]... [--exclude GLOB]...
//!     [--rule datanorm|magnitude] [--set KEY=VALUE]... [--sparsity-level F] [--block HxW]
//!     [--zeros-per-block N] [--norm l1|l2] [--nan-policy error|rank-last]
//!     [--config FILE.toml] [--masks MASKS.safetensors]
//!     [--state STATE.safetensors] [--force] [--report text|json] [--quiet]
//! sparsify inspect FILE.safetensors [--report json]
//! sparsify bench [--rows R] [--cols C] [--dtype f32|f16|bf16|f64] [config flags] [--repeat N]
//! sparsify demo [--out DIR]
//! ```
//!
//! | module | what |
//! |---|---|
//! | [`cli`] | arguments |
//! | [`checkpoint`] | memory-mapped, validated input |
//! | [`select`] | which tensors are sparsified |
//! | [`config_file`] | the `--config` TOML file and config precedence |
//! | [`run`] | `sparsify run` (streaming; see its docs for the memory bound) |
//! | [`inspect`] | `sparsify inspect` |
//! | [`bench`](mod@bench) | `sparsify bench` |
//! | [`demo`] | `sparsify demo` |
//! | [`report`] | tables and number formats |
//! | [`alloc`] | the counting allocator behind `bench`'s peak memory |
//! | [`error`] | one-line errors, exit status 2 |
//!
//! ## How large a file it handles
//!
//! `run` memory-maps the input and streams the output tensor by tensor, so the checkpoint's size is
//! bounded by disk, not RAM. With `S` the byte size of the largest *selected* tensor, the heap
//! peaks at about `S/(8 × element size)` (its bit mask) `+` the kernel's one byte per block (`S/16`
//! for 1x4 blocks of f32) `+ 8 MiB` (one 4 MiB squash chunk, write buffers): about 10% of the
//! largest tensor for 1x4 blocks of f32. When the kernel's sampled selection misses (rare; adversarial
//! score distributions) it also holds one 4-byte key per block, `S/4`, for about 35% at worst. The
//! squashed output is streamed through the chunk, never held whole. The pages of the mapped input
//! are page cache that the kernel evicts as needed; a tensor larger than RAM still works, read from
//! disk twice (scores, then squash). So a machine with `R` bytes of RAM handles a checkpoint of any
//! size on disk whose largest selected tensor is below about `2.5 × R` (f32, 1x4 blocks, worst
//! case; about `10 × R` typically); e.g. 16 GB of RAM runs a 500 GB checkpoint with 40 GB tables.
//! Measured: the 70 MB demo checkpoint (largest table 32 MB) peaks at 9.4 MB of heap, and a
//! 256 MB table at 29 MB.
//! `--state` adds every selected tensor's bit mask (1/32 of f32 data) until the end, and copies of
//! tensors whose bytes are not aligned in the input (files written by the safetensors libraries
//! are aligned; an unaligned tensor is copied, one at a time, in the main pass too).
#![warn(missing_docs)]

pub mod alloc;
pub mod bench;
pub mod budget;
pub mod checkpoint;
pub mod cli;
pub mod config_file;
pub mod demo;
pub mod error;
pub mod expand;
pub mod inspect;
pub mod report;
pub mod run;
pub mod select;

use std::ffi::OsString;
use std::io::Write;

use clap::Parser;

use crate::cli::{Cli, Command, ReportFormat};
use crate::error::{CliError, Result};
use crate::run::Ui;
use data_sparsifier::rule::Registry;

/// Writes to stderr, ignoring errors: a closed stderr (e.g. `sparsify run ... 2>&1 | head -1`)
/// must not kill the process, as `eprintln!` would (it panics). Everything the tool writes to
/// stderr goes through here.
pub fn print_stderr(s: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(s.as_bytes());
    let _ = err.flush();
}

/// Prints to stdout, ignoring a closed pipe (e.g. `sparsify inspect f | head`).
fn print_stdout(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    let s = serde_json::to_string_pretty(v)
        .map_err(|e| CliError::Usage(format!("cannot encode the report as JSON: {e}")))?;
    print_stdout(&(s + "\n"));
    Ok(())
}

/// Prints a human report: on stdout in text mode, else on stderr (unless quiet) under the JSON.
fn print_report<T: serde::Serialize>(
    format: ReportFormat,
    quiet: bool,
    text: &str,
    v: &T,
) -> Result<()> {
    match format {
        ReportFormat::Text => {
            print_stdout(text);
            Ok(())
        }
        ReportFormat::Json => {
            if !quiet {
                print_stderr(text);
            }
            print_json(v)
        }
    }
}

/// `bench` times the default rule's kernel: its flags as that rule's typed patch.
fn bench_flags<P: serde::de::DeserializeOwned>(flags: &cli::RuleFlags) -> Result<P> {
    let kind = flags.rule.as_deref().unwrap_or(Registry::DEFAULT);
    if kind != Registry::DEFAULT {
        return Err(CliError::Usage(format!(
            "--rule {kind:?}: bench times the {} kernel only; leave --rule out",
            Registry::DEFAULT
        )));
    }
    let rule = Registry::builtin()
        .create(kind)
        .map_err(|e| CliError::lib("bench", e))?;
    let patch = flags.patch_for(rule.as_ref())?;
    serde_json::from_value(patch.patch().clone())
        .map_err(|e| CliError::Usage(format!("bad bench config: {e}")))
}

/// Runs a parsed command line.
pub fn execute(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(a) => {
            let opts = run::RunOptions {
                input: a.input,
                output: a.output,
                tensors: a.tensors,
                exclude: a.exclude,
                flags: a.config,
                config: a.config_file,
                masks: a.masks,
                state: a.state,
                format: a.format,
                quantize: a.quantize.map(Into::into),
                global_sparsity: a.global_sparsity,
                global_normalization: a.global_normalization,
                force: a.force,
            };
            let r = run::run(&opts, Ui { quiet: a.quiet })?;
            print_report(a.report, a.quiet, &r.render(), &r)
        }
        Command::Inspect(a) => {
            let r = inspect::inspect(&a.file)?;
            print_report(a.report, false, &r.render(), &r)
        }
        Command::Expand(a) => {
            let r = expand::expand(&a.input, &a.output, a.force)?;
            if !a.quiet {
                print_stderr(&r.render());
            }
            Ok(())
        }
        Command::Bench(a) => {
            let opts = bench::BenchOptions {
                rows: a.rows,
                cols: a.cols,
                dtype: a.dtype,
                flags: bench_flags(&a.config)?,
                repeat: a.repeat as usize,
                seed: a.seed,
            };
            let r = bench::bench(&opts)?;
            print_report(a.report, false, &r.render(), &r)
        }
        Command::Demo(a) => {
            let opts = demo::DemoOptions {
                out: a.out,
                force: a.force,
                seed: a.seed,
                scale: a.scale,
            };
            let r = demo::demo(&opts, Ui { quiet: a.quiet })?;
            print_report(a.report, a.quiet, &r.render(), &r)
        }
    }
}

/// Folds a clap error into one line (without the usage block).
fn clap_one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let mut parts = Vec::new();
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("Usage:") || l.starts_with("For more information") {
            break;
        }
        if !l.is_empty() {
            parts.push(l.trim_start_matches("error:").trim().to_string());
        }
    }
    format!("{} (see 'sparsify --help')", parts.join(" "))
}

/// The whole program: parses `args`, runs, prints any error as one line, and returns the exit
/// status (0 ok, 2 error).
pub fn main_with(args: impl IntoIterator<Item = OsString>) -> u8 {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let loc = info
            .location()
            .map(|l| format!(" at {l}"))
            .unwrap_or_default();
        print_stderr(&format!(
            "error: internal error (a bug in sparsify, please report it): {}{loc}\n",
            msg.replace('\n', " ")
        ));
    }));
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    print_stdout(&e.render().to_string());
                    0
                }
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
                    print_stderr(&e.render().to_string());
                    2
                }
                _ => {
                    print_stderr(&format!("error: {}\n", clap_one_line(&e)));
                    2
                }
            };
        }
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| execute(cli))) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            print_stderr(&format!("error: {}\n", e.one_line()));
            e.exit_code()
        }
        Err(_) => 2,
    }
}
