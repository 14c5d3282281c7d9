//! `sparsify demo`: builds a DLRM-like checkpoint, sparsifies it with a config file, and reports.
//!
//! The checkpoint (about 70 MB, f32) holds the tensors of the reference DLRM model's layout:
//!
//! * eight embedding tables `emb_l.{0..7}.weight`, 2 000 to 500 000 rows (987 000 in all), dims 64
//!   down to 16. Row popularity is Zipf-like, and so are row norms: the row of popularity rank `r`
//!   has norm proportional to `r^-0.7`, with ranks randomly permuted over the rows (popular ids are
//!   scattered, as hashed ids are);
//! * a bottom and a top MLP (`bot_l.*`, `top_l.*`): He-initialized weights and 1-D biases;
//! * an `I64` step counter.
//!
//! The config (written beside it as `sparsify.toml`) is:
//!
//! * embedding tables: 80% of 1x4 blocks zeroed by L2 norm. With heavy-tailed row norms the
//!   lowest-norm 80% of blocks hold a small share of a table's energy (the demo prints the share
//!   kept), while the sparse table compresses about 5x with a block format;
//! * MLP weights: 2:4 semi-structured (`sparsity_level = 1.0`, `zeros_per_block = 2`): Gaussian
//!   weights have no such tail, so only the fine-grained 50% pattern hardware accelerates is used;
//! * biases and the counter: untouched (the default selection takes 2-D floating-point tensors only).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use data_sparsifier::format::safetensors::SafetensorsWriter;
use data_sparsifier::format::{FileDType as Dtype, TensorInfo};
use data_sparsifier::random::Rng;
use serde::Serialize;

use crate::checkpoint::Checkpoint;
use crate::error::{CliError, Result};
use crate::report::{self, Table};
use crate::run::{run, RunOptions, RunReport, Ui};

/// Embedding tables: (rows, dim).
pub const TABLES: [(usize, usize); 8] = [
    (2_000, 64),
    (5_000, 64),
    (10_000, 32),
    (20_000, 32),
    (50_000, 32),
    (100_000, 16),
    (300_000, 16),
    (500_000, 16),
];

/// Row-norm exponent: the row of popularity rank `r` (1-based) has norm `∝ r^-ALPHA`.
pub const ALPHA: f64 = 0.7;

/// The demo's config file.
pub const CONFIG: &str = r#"# sparsify demo config (see `sparsify run --help`)
[defaults]
# Embedding tables: zero the 80% of 1x4 blocks with the lowest L2 norm.
sparsity_level = 0.8
sparse_block_shape = [1, 4]
norm = "L2"

# MLP weights: 2:4 semi-structured sparsity (2 zeros in every 1x4 block).
[tensors."bot_l.*.weight"]
sparsity_level = 1.0
zeros_per_block = 2

[tensors."top_l.*.weight"]
sparsity_level = 1.0
zeros_per_block = 2
"#;

/// Demo options.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Output directory (a new temp dir if `None`).
    pub out: Option<PathBuf>,
    /// Overwrite the demo's files if they exist.
    pub force: bool,
    /// Seed.
    pub seed: u64,
    /// Scale of the table row counts (1.0 = the documented sizes; tests use less).
    pub scale: f64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            out: None,
            force: false,
            seed: 0,
            scale: 1.0,
        }
    }
}

/// Per-table quality numbers.
#[derive(Debug, Clone, Serialize)]
pub struct TableQuality {
    /// The tensor.
    pub name: String,
    /// Fraction of elements zeroed.
    pub sparsity: f64,
    /// Fraction of the sum of squares kept.
    pub energy_kept: f64,
}

/// What `demo --report json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// The directory of the files.
    pub dir: String,
    /// The generated checkpoint.
    pub input: String,
    /// The config file.
    pub config: String,
    /// Seconds generating the checkpoint.
    pub generate_seconds: f64,
    /// The run.
    pub run: RunReport,
    /// Energy kept per sparsified tensor.
    pub quality: Vec<TableQuality>,
}

enum Init {
    Embedding,
    He { fan_in: usize },
    Bias,
    Counter,
}

fn layout(scale: f64) -> Vec<(String, Dtype, Vec<usize>, Init)> {
    let mut v = vec![
        (
            "bot_l.0.weight".to_string(),
            Dtype::F32,
            vec![64, 13],
            Init::He { fan_in: 13 },
        ),
        ("bot_l.0.bias".into(), Dtype::F32, vec![64], Init::Bias),
        (
            "bot_l.2.weight".into(),
            Dtype::F32,
            vec![16, 64],
            Init::He { fan_in: 64 },
        ),
        ("bot_l.2.bias".into(), Dtype::F32, vec![16], Init::Bias),
    ];
    for (i, &(rows, dim)) in TABLES.iter().enumerate() {
        let rows = ((rows as f64 * scale).round() as usize).max(16);
        v.push((
            format!("emb_l.{i}.weight"),
            Dtype::F32,
            vec![rows, dim],
            Init::Embedding,
        ));
    }
    v.extend([
        (
            "top_l.0.weight".to_string(),
            Dtype::F32,
            vec![128, 512],
            Init::He { fan_in: 512 },
        ),
        ("top_l.0.bias".into(), Dtype::F32, vec![128], Init::Bias),
        (
            "top_l.2.weight".into(),
            Dtype::F32,
            vec![1, 128],
            Init::He { fan_in: 128 },
        ),
        ("top_l.2.bias".into(), Dtype::F32, vec![1], Init::Bias),
        ("train_step".into(), Dtype::I64, vec![1], Init::Counter),
    ]);
    v
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Writes the DLRM-like checkpoint to `path`, one tensor in memory at a time.
pub fn write_checkpoint(path: &Path, seed: u64, scale: f64) -> Result<()> {
    let layout = layout(scale);
    let headers: Vec<TensorInfo> = layout
        .iter()
        .map(|(n, d, s, _)| TensorInfo::new(n.clone(), *d, s.clone()))
        .collect();
    let meta = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        (
            "model".to_string(),
            "synthetic DLRM-like checkpoint from `sparsify demo`".to_string(),
        ),
    ]);
    let lib = |e| CliError::lib(format!("writing {}", path.display()), e);
    let mut w = SafetensorsWriter::create(path, &headers, Some(&meta)).map_err(lib)?;
    let mut rng = Rng::new(seed);
    for (_, _, shape, init) in &layout {
        let n: usize = shape.iter().product();
        let bytes = match init {
            Init::Counter => 123_456i64.to_le_bytes().to_vec(),
            Init::Bias => f32_bytes(
                &(0..n)
                    .map(|_| (rng.normal() * 0.01) as f32)
                    .collect::<Vec<_>>(),
            ),
            Init::He { fan_in } => {
                let s = (2.0 / *fan_in as f64).sqrt();
                f32_bytes(
                    &(0..n)
                        .map(|_| (rng.normal() * s) as f32)
                        .collect::<Vec<_>>(),
                )
            }
            Init::Embedding => {
                let (rows, dim) = (shape[0], shape[1]);
                // A random permutation of popularity ranks over the rows.
                let mut rank: Vec<usize> = (0..rows).collect();
                for i in (1..rows).rev() {
                    rank.swap(i, rng.below(i as u64 + 1) as usize);
                }
                let mut v = Vec::with_capacity(n);
                for &r in &rank {
                    let scale = ((r + 1) as f64).powf(-ALPHA) / (dim as f64).sqrt();
                    v.extend((0..dim).map(|_| (rng.normal() * scale) as f32));
                }
                f32_bytes(&v)
            }
        };
        w.write(&bytes).map_err(lib)?;
    }
    w.finish().map_err(lib)
}

/// The share of the sum of squares of each sparsified tensor kept in the output.
fn quality(input: &Path, output: &Path, run: &RunReport) -> Result<Vec<TableQuality>> {
    let (a, b) = (Checkpoint::open(input)?, Checkpoint::open(output)?);
    let sum_sq = |ck: &Checkpoint, name: &str| -> f64 {
        ck.tensors()
            .iter()
            .position(|t| t.name == name)
            .map(|i| {
                ck.bytes(i)
                    .chunks_exact(4)
                    .map(|c| {
                        let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64;
                        x * x
                    })
                    .sum()
            })
            .unwrap_or(0.0)
    };
    Ok(run
        .tensors
        .iter()
        .map(|t| {
            let total = sum_sq(&a, &t.name);
            TableQuality {
                name: t.name.clone(),
                sparsity: t.sparsity,
                energy_kept: if total > 0.0 {
                    sum_sq(&b, &t.name) / total
                } else {
                    1.0
                },
            }
        })
        .collect())
}

fn fresh_temp_dir() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for n in 0..100 {
        let dir = base.join(format!("sparsify-demo-{}-{stamp}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(CliError::io(&dir, e)),
        }
    }
    Err(CliError::Usage(format!(
        "cannot create a temp directory in {}: pass --out DIR",
        base.display()
    )))
}

/// Runs the demo.
pub fn demo(opts: &DemoOptions, ui: Ui) -> Result<DemoReport> {
    if !(opts.scale > 0.0 && opts.scale <= 100.0) {
        return Err(CliError::Usage(format!(
            "--scale {} is out of range: give a factor in (0, 100]",
            opts.scale
        )));
    }
    let dir = match &opts.out {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| CliError::io(d, e))?;
            d.clone()
        }
        None => fresh_temp_dir()?,
    };
    let input = dir.join("dlrm.safetensors");
    let output = dir.join("dlrm.sparse.safetensors");
    let masks = dir.join("dlrm.masks.safetensors");
    let config = dir.join("sparsify.toml");
    if !opts.force {
        for p in [&input, &output, &masks, &config] {
            if p.exists() {
                return Err(CliError::OutputExists {
                    path: p.display().to_string(),
                });
            }
        }
    }
    ui.say(format!(
        "demo: writing a DLRM-like checkpoint ({} embedding tables, {} rows in all) to {}",
        TABLES.len(),
        TABLES
            .iter()
            .map(|t| ((t.0 as f64 * opts.scale).round() as usize).max(16))
            .sum::<usize>(),
        input.display()
    ));
    let g0 = Instant::now();
    write_checkpoint(&input, opts.seed, opts.scale)?;
    data_sparsifier::format::write_atomic(&config, CONFIG.as_bytes())
        .map_err(|e| CliError::lib(format!("writing {}", config.display()), e))?;
    let generate_seconds = g0.elapsed().as_secs_f64();
    ui.say(format!(
        "demo: running: sparsify run {} -o {} --config {} --masks {} --force",
        input.display(),
        output.display(),
        config.display(),
        masks.display()
    ));
    let report = run(
        &RunOptions {
            input: input.clone(),
            output: output.clone(),
            config: Some(config.clone()),
            masks: Some(masks),
            force: true,
            ..Default::default()
        },
        ui,
    )?;
    let quality = quality(&input, &output, &report)?;
    Ok(DemoReport {
        dir: dir.display().to_string(),
        input: input.display().to_string(),
        config: config.display().to_string(),
        generate_seconds,
        run: report,
        quality,
    })
}

impl DemoReport {
    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut out = self.run.render();
        let mut t = Table::new(&["tensor", ">zeroed", ">energy kept"]);
        for q in &self.quality {
            t.row(vec![
                q.name.clone(),
                report::percent(q.sparsity),
                report::percent(q.energy_kept),
            ]);
        }
        out.push_str("\nshare of each tensor's sum of squares kept:\n");
        out.push_str(&t.render());
        out.push_str(&format!(
            "\nfiles in {}: dlrm.safetensors (input, generated in {}), sparsify.toml (config), dlrm.sparse.safetensors (output), dlrm.masks.safetensors (masks)\nnext: sparsify inspect {}\n",
            self.dir,
            report::seconds(self.generate_seconds),
            self.run.output
        ));
        out
    }
}
