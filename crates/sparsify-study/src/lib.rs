//! The seed's DLRM study (reference §7), reproduced with this project's sparsifier and its
//! compact formats: disk size, forward time and model quality vs sparsity, as CSVs and PNGs.
//!
//! One command runs it all: `cargo run --release -p sparsify-study -- --out DIR`. See
//! `docs/benchmarks.md` for a default-scale run and what it shows.
//!
//! - [`data`]: the seeded Criteo-shaped generator (hidden teacher, Zipf ids) and MovieLens-100k;
//! - [`model`]: the DLRM in candle, trained on the CPU;
//! - [`sweep`]: the seed's grid through `DataNormSparsifier`, every storage format, lookups;
//! - [`metrics`]: the seed's quality metrics;
//! - [`report`] and [`plots`]: the CSVs, the figures and the summary.

#![warn(missing_docs)]

pub mod data;
pub mod error;
pub mod metrics;
pub mod model;
pub mod plots;
pub mod report;
pub mod sweep;

use std::path::PathBuf;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

pub use error::{Result, StudyError};

use data::{Dataset, SyntheticSize};
use model::{Dlrm, Spec, TrainOptions};
use report::DatasetFacts;
use sweep::{GridConfig, Results, SweepOptions};

/// The size of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scale {
    /// Seconds: tables capped at 100 rows, a few thousand samples (CI).
    Tiny,
    /// Minutes on a 2-core machine: tables capped at 40,000 rows (8 of Criteo's 26 are larger;
    /// 367,398 rows in all), 400k training samples.
    Default,
    /// Criteo's true 33.8 M rows (about 2 GiB f32), 4 M training samples: a bigger machine.
    Full,
}

impl Scale {
    /// The synthetic data of this scale.
    pub fn synthetic(self) -> SyntheticSize {
        match self {
            Scale::Tiny => SyntheticSize {
                cap: Some(100),
                train: 4000,
                test: 2000,
            },
            Scale::Default => SyntheticSize {
                cap: Some(40_000),
                train: 400_000,
                test: 16_384,
            },
            Scale::Full => SyntheticSize {
                cap: None,
                train: 4_000_000,
                test: 16_384,
            },
        }
    }
    /// Training settings.
    pub fn train(self) -> TrainOptions {
        match self {
            Scale::Tiny => TrainOptions {
                epochs: 3,
                batch: 256,
                lr: 3e-3,
                seed: 11,
            },
            _ => TrainOptions {
                epochs: 1,
                batch: 1024,
                lr: 2e-3,
                seed: 11,
            },
        }
    }
    /// MovieLens ratings held out (the forward-time batch).
    pub fn movielens_test(self) -> usize {
        match self {
            Scale::Tiny => 2000,
            _ => 16_384,
        }
    }
    /// Timed forwards per model and format (after one discarded).
    pub fn timed_runs(self) -> usize {
        match self {
            Scale::Tiny => 1,
            _ => 3,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct StudyOptions {
    /// The scale.
    pub scale: Scale,
    /// Where the CSVs, PNGs and summary go (created if absent).
    pub out: PathBuf,
    /// Whether to run the MovieLens part (it downloads the data once).
    pub movielens: bool,
    /// The data seed.
    pub seed: u64,
    /// Whether to draw progress bars.
    pub progress: bool,
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct StudyOutput {
    /// Every row measured.
    pub results: Results,
    /// Per dataset facts.
    pub facts: Vec<DatasetFacts>,
    /// The summary (also in `summary.md`).
    pub summary: String,
    /// The figures' file names.
    pub plots: Vec<String>,
    /// Why MovieLens was skipped, if it was.
    pub movielens_skipped: Option<String>,
}

fn bar(len: u64, progress: bool, what: &str) -> ProgressBar {
    if !progress {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(
            "{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    b.set_prefix(what.to_string());
    b
}

fn run_dataset(
    ds: &Dataset,
    opts: &StudyOptions,
    work: &std::path::Path,
) -> Result<(Results, DatasetFacts)> {
    let spec = Spec::dlrm(ds.n_dense, ds.table_rows.clone());
    let model = Dlrm::new(spec, opts.seed ^ 0x5EED)?;
    let train = opts.scale.train();
    let steps = train.epochs * ds.train.len().div_ceil(train.batch);
    let b = bar(steps as u64, opts.progress, "train");
    b.set_message(ds.name);
    let report = model.train(&ds.train, train, &b)?;
    b.finish_and_clear();
    let sw = SweepOptions {
        levels: sweep::seed_levels(),
        configs: GridConfig::seed_grid(),
        timed_runs: opts.scale.timed_runs(),
    };
    let b = bar(
        (sw.levels.len() * sw.configs.len()) as u64,
        opts.progress,
        "sweep",
    );
    let t0 = Instant::now();
    let results = sweep::sweep(ds, &model, &sw, work, &b)?;
    b.finish_and_clear();
    let facts = DatasetFacts {
        name: ds.name,
        table_rows: ds.table_rows.clone(),
        samples: (ds.train.len(), ds.test.len()),
        base_rate: metrics::base_rate(&ds.test.labels),
        ceiling_auc: ds.ceiling_auc,
        train: report,
        sweep_seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((results, facts))
}

/// Runs the study: synthetic data (and MovieLens unless disabled or unavailable), training,
/// the sweep, then writes the CSVs, the PNGs and `summary.md` into `opts.out`.
pub fn run(opts: &StudyOptions) -> Result<StudyOutput> {
    std::fs::create_dir_all(&opts.out)
        .map_err(|e| StudyError::io(format!("creating {}", opts.out.display()), e))?;
    let work = tempfile::Builder::new()
        .prefix(".study-work")
        .tempdir_in(&opts.out)
        .map_err(|e| {
            StudyError::io(
                format!("creating a scratch folder in {}", opts.out.display()),
                e,
            )
        })?;
    let mut results = Results::default();
    let mut facts = Vec::new();

    let synth = data::synthetic(opts.scale.synthetic(), opts.seed);
    let (r, f) = run_dataset(&synth, opts, work.path())?;
    drop(synth);
    results.extend(r);
    facts.push(f);

    let mut movielens_skipped = None;
    if opts.movielens {
        let loaded = data::movielens_text(&data::cache_dir())
            .and_then(|text| data::movielens(&text, opts.scale.movielens_test(), opts.seed));
        match loaded {
            Ok(ds) => {
                let (r, f) = run_dataset(&ds, opts, work.path())?;
                results.extend(r);
                facts.push(f);
            }
            Err(e) => {
                eprintln!("{e}; running the synthetic part only");
                movielens_skipped = Some(e.to_string());
            }
        }
    } else {
        movielens_skipped = Some("disabled (--no-movielens)".into());
    }

    report::write_csvs(&opts.out, &results)?;
    let mut plots = Vec::new();
    for f in &facts {
        plots.extend(report::write_plots(&opts.out, f.name, &results)?);
    }
    let summary = report::summary(&results, &facts);
    report::write_summary(&opts.out, &summary)?;
    Ok(StudyOutput {
        results,
        facts,
        summary,
        plots,
        movielens_skipped,
    })
}
