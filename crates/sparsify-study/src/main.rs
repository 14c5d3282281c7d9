//! `sparsify-study`: the seed's DLRM study in one command.
//!
//! `cargo run --release -p sparsify-study -- [--scale tiny|default|full] [--out DIR] [--no-movielens]`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sparsify_study::{run, Scale, StudyOptions};

/// Trains a DLRM-shaped model, sparsifies its tables over the seed's grid, stores them in every
/// format and writes CSVs, PNGs and a summary.
#[derive(Debug, Parser)]
#[command(name = "sparsify-study", version)]
struct Args {
    /// The size of the run.
    #[arg(long, value_enum, default_value = "default")]
    scale: Scale,
    /// The folder for the CSVs, PNGs and summary.md.
    #[arg(long, default_value = "study-out")]
    out: PathBuf,
    /// Skip MovieLens-100k (no download).
    #[arg(long)]
    no_movielens: bool,
    /// The seed of the synthetic data and the splits.
    #[arg(long, default_value_t = 2026)]
    seed: u64,
    /// No progress bars.
    #[arg(long)]
    quiet: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let opts = StudyOptions {
        scale: a.scale,
        out: a.out.clone(),
        movielens: !a.no_movielens,
        seed: a.seed,
        progress: !a.quiet,
    };
    let t0 = std::time::Instant::now();
    match run(&opts) {
        Ok(out) => {
            println!("{}", out.summary);
            println!(
                "wrote 3 CSVs, {} PNGs and summary.md to {} in {:.0} s",
                out.plots.len(),
                a.out.display(),
                t0.elapsed().as_secs_f64()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sparsify-study: {e}");
            ExitCode::from(2)
        }
    }
}
