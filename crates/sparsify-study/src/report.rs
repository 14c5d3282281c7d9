//! The study's outputs: the seed's three CSVs (plus our columns), the figures and the summary.

use std::fmt::Write as _;
use std::path::Path;

use data_sparsifier::compact::Encoding;

use crate::error::{Result, StudyError};
use crate::plots::{line_chart, Series, XAxis};
use crate::sweep::{Format, GridConfig, Results};

/// The metadata CSV's columns: the seed's (`path` left out: no checkpoint is kept), then ours.
pub const METADATA_COLUMNS: &[&str] = &[
    "norm",
    "sparse_block_shape",
    "sparsity_level",
    "step_time_sec",
    "zip_file_size",
    "dataset",
    "zero_fraction",
    "model_zip_bytes",
    "mlp_bytes",
    "dense_bytes",
    "dense_zip_bytes",
    "compact_f32_bytes",
    "compact_int8_bytes",
    "compact_int4_bytes",
];
/// The metrics CSV's columns: the seed's, then ours.
pub const METRICS_COLUMNS: &[&str] = &[
    "norm",
    "sparse_block_shape",
    "sparsity_level",
    "precision",
    "recall",
    "f1",
    "roc_auc",
    "accuracy",
    "log_loss",
    "dataset",
    "format",
    "bytes",
];
/// The forward-time CSV's columns: the seed's, then ours.
pub const FORWARD_COLUMNS: &[&str] = &[
    "norm",
    "sparse_block_shape",
    "sparsity_level",
    "time_taken",
    "dlrm_type",
    "dataset",
    "lookup_time",
];

fn csv(columns: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut s = columns.join(",");
    s.push('\n');
    for r in rows {
        s.push_str(&r.join(","));
        s.push('\n');
    }
    s
}

fn write(dir: &Path, name: &str, text: &str) -> Result<()> {
    data_sparsifier::format::write_atomic(dir.join(name), text.as_bytes()).map_err(StudyError::from)
}

fn key(c: &GridConfig, level: f64) -> [String; 3] {
    [
        c.norm_name().to_string(),
        c.block_name(),
        format!("{level:.2}"),
    ]
}

/// Writes `sparse_model_metadata.csv`, `sparse_model_metrics.csv` and
/// `dlrm_forward_time_info.csv` into `dir`.
pub fn write_csvs(dir: &Path, r: &Results) -> Result<()> {
    let meta = r.metadata.iter().map(|m| {
        let mut v = key(&m.config, m.level).to_vec();
        v.extend([
            format!("{:.6}", m.step_time_sec),
            m.zip_file_size.to_string(),
            m.dataset.to_string(),
            format!("{:.6}", m.zero_fraction),
            m.model_zip_bytes.to_string(),
            m.mlp_bytes.to_string(),
            m.dense_bytes.to_string(),
            m.dense_zip_bytes.to_string(),
            m.compact_f32_bytes.to_string(),
            m.compact_int8_bytes.to_string(),
            m.compact_int4_bytes.to_string(),
        ]);
        v
    });
    write(
        dir,
        "sparse_model_metadata.csv",
        &csv(METADATA_COLUMNS, meta),
    )?;
    let metrics = r.metrics.iter().map(|m| {
        let q = &m.quality;
        let mut v = key(&m.config, m.level).to_vec();
        v.extend(
            [
                q.precision,
                q.recall,
                q.f1,
                q.roc_auc,
                q.accuracy,
                q.log_loss,
            ]
            .iter()
            .map(|x| format!("{x:.6}")),
        );
        v.extend([m.dataset.to_string(), m.format.name(), m.bytes.to_string()]);
        v
    });
    write(
        dir,
        "sparse_model_metrics.csv",
        &csv(METRICS_COLUMNS, metrics),
    )?;
    let fwd = r.forward.iter().map(|f| {
        let mut v = key(&f.config, f.level).to_vec();
        v.extend([
            format!("{:.6}", f.time_taken),
            f.format.name(),
            f.dataset.to_string(),
            format!("{:.6}", f.lookup_time),
        ]);
        v
    });
    write(
        dir,
        "dlrm_forward_time_info.csv",
        &csv(FORWARD_COLUMNS, fwd),
    )
}

/// The config our own formats are plotted for (the seed's (1,4) blocks, L1).
fn ours() -> GridConfig {
    GridConfig::seed_grid()[1]
}

/// The four figures of one dataset, as `<dataset>_<figure>.png`; returns their file names.
pub fn write_plots(dir: &Path, dataset: &str, r: &Results) -> Result<Vec<String>> {
    let meta: Vec<_> = r.metadata.iter().filter(|m| m.dataset == dataset).collect();
    let metrics: Vec<_> = r.metrics.iter().filter(|m| m.dataset == dataset).collect();
    let fwd: Vec<_> = r.forward.iter().filter(|m| m.dataset == dataset).collect();
    let configs = GridConfig::seed_grid();
    let compact = [Encoding::F32, Encoding::Int8, Encoding::Int4];
    let mut names = Vec::new();
    let mut emit =
        |fig: &str, title: String, x: &str, y: &str, axis, series: Vec<Series>| -> Result<()> {
            let name = format!("{dataset}_{fig}.png");
            line_chart(&dir.join(&name), &title, x, y, axis, &series)?;
            names.push(name);
            Ok(())
        };

    // 1. Compressed size vs sparsity: the seed's dense + zip per config, plus our compact forms.
    let mut size = Vec::new();
    for c in &configs {
        size.push(Series {
            label: format!("{} dense+zip", c.label()),
            points: meta
                .iter()
                .filter(|m| m.config == *c)
                .map(|m| (m.level, m.dense_zip_bytes as f64 / 1e6))
                .collect(),
        });
    }
    for e in compact {
        size.push(Series {
            label: format!("{} compact {e}", ours().label()),
            points: meta
                .iter()
                .filter(|m| m.config == ours())
                .map(|m| (m.level, m.bytes(Format::Compact(e)) as f64 / 1e6))
                .collect(),
        });
    }
    emit(
        "compressed_size",
        format!("{dataset}: embedding tables' file size vs sparsity"),
        "sparsity level",
        "MB",
        XAxis::Linear,
        size,
    )?;

    // 2. Accuracy vs sparsity: every config (dense = compact f32), plus quantized (1,4).
    let metric_series =
        |f: Format,
         c: &GridConfig,
         label: String,
         pick: &dyn Fn(&crate::metrics::Quality) -> f64| Series {
            label,
            points: metrics
                .iter()
                .filter(|m| m.config == *c && m.format == f)
                .map(|m| (m.level, pick(&m.quality)))
                .collect(),
        };
    let mut acc: Vec<Series> = configs
        .iter()
        .map(|c| metric_series(Format::Dense, c, c.label(), &|q| q.accuracy))
        .collect();
    for e in [Encoding::Int8, Encoding::Int4] {
        acc.push(metric_series(
            Format::Compact(e),
            &ours(),
            format!("{} compact {e}", ours().label()),
            &|q| q.accuracy,
        ));
    }
    emit(
        "accuracy",
        format!("{dataset}: accuracy vs sparsity level"),
        "sparsity level",
        "accuracy",
        XAxis::Linear,
        acc,
    )?;

    // 3. Forward time vs sparsity: dense vs compact lookups, (1,4) L1.
    let ft = Format::ALL
        .iter()
        .map(|&f| Series {
            label: format!("{} {}", ours().label(), f.name()),
            points: fwd
                .iter()
                .filter(|x| x.config == ours() && x.format == f)
                .map(|x| (x.level, x.time_taken * 1e3))
                .collect(),
        })
        .collect();
    emit(
        "forward_time",
        format!("{dataset}: forward time of the test batch vs sparsity"),
        "sparsity level",
        "ms per forward",
        XAxis::Linear,
        ft,
    )?;

    // 4. Quality vs bytes: AUC against the tables' bytes, every format, every level, (1,4) L1.
    let mut qb: Vec<Series> = Vec::new();
    let auc_of = |f: Format, level: f64| {
        metrics
            .iter()
            .find(|m| m.config == ours() && m.format == f && m.level == level)
            .map(|m| m.quality.roc_auc)
    };
    let mut zip = Series {
        label: "dense+zip".into(),
        points: Vec::new(),
    };
    let mut dense = Series {
        label: "dense".into(),
        points: Vec::new(),
    };
    for m in meta.iter().filter(|m| m.config == ours()) {
        if let Some(a) = auc_of(Format::Dense, m.level) {
            zip.points.push((m.dense_zip_bytes as f64, a));
            dense.points.push((m.dense_bytes as f64, a));
        }
    }
    qb.push(dense);
    qb.push(zip);
    for e in compact {
        let f = Format::Compact(e);
        qb.push(Series {
            label: format!("compact {e}"),
            points: meta
                .iter()
                .filter(|m| m.config == ours())
                .filter_map(|m| auc_of(f, m.level).map(|a| (m.bytes(f) as f64, a)))
                .collect(),
        });
    }
    for s in &mut qb {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    emit(
        "auc_vs_size",
        format!(
            "{dataset}: ROC AUC vs tables' bytes ({}, all levels)",
            ours().label()
        ),
        "bytes (log)",
        "ROC AUC",
        XAxis::LogBytes,
        qb,
    )?;
    Ok(names)
}

/// Facts about one dataset's run for the summary.
#[derive(Debug, Clone)]
pub struct DatasetFacts {
    /// The dataset.
    pub name: &'static str,
    /// Rows of each table.
    pub table_rows: Vec<usize>,
    /// Training / test samples.
    pub samples: (usize, usize),
    /// Test base rate.
    pub base_rate: f64,
    /// Teacher AUC (synthetic).
    pub ceiling_auc: Option<f64>,
    /// Training steps and seconds, loss first/last.
    pub train: crate::model::TrainReport,
    /// Sweep seconds.
    pub sweep_seconds: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// For every model of `dataset` timed with `fmt`, `time(fmt row) / time(dense row)` of the same
/// config and level.
fn ratios_to_dense(
    r: &Results,
    dataset: &str,
    fmt: Format,
    time: impl Fn(&crate::sweep::ForwardRow) -> f64,
) -> Vec<f64> {
    let of = |f: Format| {
        r.forward
            .iter()
            .filter(move |x| x.dataset == dataset && x.format == f)
    };
    of(fmt)
        .filter_map(|x| {
            of(Format::Dense)
                .find(|y| y.config == x.config && y.level == x.level)
                .map(|y| time(x) / time(y))
        })
        .collect()
}

/// The summary (markdown): per dataset, the training, the targets and a table per level.
pub fn summary(r: &Results, facts: &[DatasetFacts]) -> String {
    let mut s = String::new();
    for f in facts {
        let d = f.name;
        let _ = writeln!(s, "## {d}\n");
        let rows: usize = f.table_rows.iter().sum();
        let _ = writeln!(
            s,
            "- {} tables, {rows} rows × 16; {} training and {} test samples; test base rate {:.4}{}",
            f.table_rows.len(), f.samples.0, f.samples.1, f.base_rate,
            f.ceiling_auc.map_or(String::new(), |c| format!("; teacher (ceiling) AUC {c:.4}"))
        );
        let _ = writeln!(
            s,
            "- training: {} steps in {:.0} s, loss {:.4} → {:.4}; sweep {:.0} s",
            f.train.steps, f.train.seconds, f.train.first_loss, f.train.last_loss, f.sweep_seconds
        );
        let q = |c: &GridConfig, fmt: Format, level: f64| {
            r.metrics
                .iter()
                .find(|m| {
                    m.dataset == d
                        && m.config == *c
                        && m.format == fmt
                        && (m.level - level).abs() < 1e-9
                })
                .map(|m| m.quality)
        };
        let meta = |c: &GridConfig, level: f64| {
            r.metadata
                .iter()
                .find(|m| m.dataset == d && m.config == *c && (m.level - level).abs() < 1e-9)
        };
        if let Some(q0) = q(&ours(), Format::Dense, 0.0) {
            let _ = writeln!(
                s,
                "- trained model (level 0): AUC {:.4}, accuracy {:.4}, log loss {:.4}",
                q0.roc_auc, q0.accuracy, q0.log_loss
            );
        }
        let _ = writeln!(s, "\n**Targets**\n");
        for c in GridConfig::seed_grid() {
            if let (Some(a0), Some(a9)) = (q(&c, Format::Dense, 0.0), q(&c, Format::Dense, 0.9)) {
                let drop = a0.accuracy - a9.accuracy;
                let rel = drop / a0.accuracy;
                let _ = writeln!(
                    s,
                    "- {}: accuracy at 0.9 is {:.4} vs {:.4} at 0: a drop of {:.2} points, {:.1}% relative (target ≤ 2%: {})",
                    c.label(), a9.accuracy, a0.accuracy, 100.0 * drop, 100.0 * rel,
                    if rel <= 0.02 { "met" } else { "not met" }
                );
            }
        }
        for c in GridConfig::seed_grid() {
            if let Some(m) = meta(&c, 0.8) {
                let ratio = m.compact_int8_bytes as f64 / m.dense_zip_bytes.max(1) as f64;
                let _ =
                    writeln!(
                    s,
                    "- {}: at 0.8, compact int8 is {} vs dense+zip {}: {:.3}× (target ≤ 0.1: {})",
                    c.label(), m.compact_int8_bytes, m.dense_zip_bytes, ratio,
                    if ratio <= 0.1 { "met" } else { "not met" }
                );
            }
        }
        for fmt in [
            Format::Compact(Encoding::F32),
            Format::Compact(Encoding::Int8),
            Format::Compact(Encoding::Int4),
        ] {
            let ratios = ratios_to_dense(r, d, fmt, |x| x.time_taken);
            let lookups = ratios_to_dense(r, d, fmt, |x| x.lookup_time);
            let med = median(ratios);
            let _ = writeln!(
                s,
                "- forward with {} lookups / dense forward: median {:.3} over all models (target ≤ 1: {}); lookups alone {:.3}",
                fmt.name(), med, if med <= 1.0 { "met" } else { "not met" }, median(lookups)
            );
        }
        let _ = writeln!(
            s,
            "\n**{} by level** (AUC; tables' bytes; forward ms)\n",
            ours().label()
        );
        let _ = writeln!(
            s,
            "| level | accuracy | AUC dense | AUC int8 | AUC int4 | dense | dense+zip | compact f32 | compact int8 | compact int4 | fwd dense | fwd compact f32 | fwd compact int8 |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        for m in r
            .metadata
            .iter()
            .filter(|m| m.dataset == d && m.config == ours())
        {
            let auc = |f| q(&ours(), f, m.level).map_or(f64::NAN, |x| x.roc_auc);
            let ms = |f: Format| {
                r.forward
                    .iter()
                    .find(|x| {
                        x.dataset == d && x.config == ours() && x.format == f && x.level == m.level
                    })
                    .map_or(f64::NAN, |x| x.time_taken * 1e3)
            };
            let _ = writeln!(
                s,
                "| {:.2} | {:.4} | {:.4} | {:.4} | {:.4} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} |",
                m.level,
                q(&ours(), Format::Dense, m.level).map_or(f64::NAN, |x| x.accuracy),
                auc(Format::Dense), auc(Format::Compact(Encoding::Int8)), auc(Format::Compact(Encoding::Int4)),
                m.dense_bytes, m.dense_zip_bytes, m.compact_f32_bytes, m.compact_int8_bytes, m.compact_int4_bytes,
                ms(Format::Dense), ms(Format::Compact(Encoding::F32)), ms(Format::Compact(Encoding::Int8)),
            );
        }
        s.push('\n');
    }
    s
}

/// Writes `summary.md` into `dir`.
pub fn write_summary(dir: &Path, text: &str) -> Result<()> {
    write(dir, "summary.md", text)
}
