//! The sweep: every (norm, block, level) of the seed's grid, sparsified with the library's
//! `DataNormSparsifier`, stored in every format, evaluated and timed.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor as CTensor};
use data_sparsifier::compact::{
    CompactEmbeddingBag, CompactFile, CompactOptions, CompactSink, Encoding,
};
use data_sparsifier::embedding::{BagMode, Bags};
use data_sparsifier::format::safetensors::SafetensorsSource;
use data_sparsifier::format::{CommitMode, FileDType, TensorInfo, TensorSink};
use data_sparsifier::norm::Norm;
use data_sparsifier::{
    DataNormConfig, DataNormSparsifier, EmbeddingBag, Mask, Parameter, SquashOptions, Tensor,
};
use flate2::{write::DeflateEncoder, Compression};
use indicatif::ProgressBar;

use crate::data::{Dataset, Split};
use crate::error::{Result, StudyError};
use crate::metrics::{quality, Quality};
use crate::model::{gather, Dlrm, DIM};

/// The seed's sparsity levels: 0.0, 0.1 … 0.9, 0.91 … 0.99, 1.0 (20 values).
pub fn seed_levels() -> Vec<f64> {
    let mut v: Vec<f64> = (0..10).map(|k| k as f64 / 10.0).collect();
    v.extend((91..100).map(|k| k as f64 / 100.0));
    v.push(1.0);
    v
}

/// One sparsifier config of the grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridConfig {
    /// The block norm.
    pub norm: Norm,
    /// The block shape.
    pub block: (usize, usize),
}

impl GridConfig {
    /// The seed's three: L1 (1,1), L1 (1,4), L2 (1,4) (L2 (1,1) ranks as L1 (1,1)).
    pub fn seed_grid() -> Vec<GridConfig> {
        vec![
            GridConfig {
                norm: Norm::L1,
                block: (1, 1),
            },
            GridConfig {
                norm: Norm::L1,
                block: (1, 4),
            },
            GridConfig {
                norm: Norm::L2,
                block: (1, 4),
            },
        ]
    }
    /// `L1` or `L2`, as the seed's CSVs.
    pub fn norm_name(&self) -> &'static str {
        match self.norm {
            Norm::L1 => "L1",
            _ => "L2",
        }
    }
    /// The block as `RxC` (the seed writes the tuple `(R, C)`).
    pub fn block_name(&self) -> String {
        format!("{}x{}", self.block.0, self.block.1)
    }
    /// `L1-1x4`, for legends.
    pub fn label(&self) -> String {
        format!("{}-{}", self.norm_name(), self.block_name())
    }
}

/// A storage format of the sparsified tables, for lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The squashed dense table (zeros stored), looked up with the dense `EmbeddingBag`.
    Dense,
    /// The compact form with this encoding, looked up with `CompactEmbeddingBag`.
    Compact(Encoding),
}

impl Format {
    /// The evaluated formats.
    pub const ALL: [Format; 4] = [
        Format::Dense,
        Format::Compact(Encoding::F32),
        Format::Compact(Encoding::Int8),
        Format::Compact(Encoding::Int4),
    ];
    /// `dense`, `compact_f32`, `compact_int8`, `compact_int4`.
    pub fn name(self) -> String {
        match self {
            Format::Dense => "dense".into(),
            Format::Compact(e) => format!("compact_{e}"),
        }
    }
}

/// A row of `sparse_model_metadata.csv`: the seed's columns (but `path`: no checkpoint is kept)
/// plus the bytes of every format.
#[derive(Debug, Clone)]
pub struct MetaRow {
    /// `synthetic` or `movielens`.
    pub dataset: &'static str,
    /// The grid config.
    pub config: GridConfig,
    /// The sparsity level.
    pub level: f64,
    /// Wall-clock seconds of `DataNormSparsifier::step` over all tables.
    pub step_time_sec: f64,
    /// The seed's column: the whole model (tables and MLP), dense plus zip, in MiB (`bytes >> 20`).
    pub zip_file_size: u64,
    /// The whole model, dense plus zip, bytes.
    pub model_zip_bytes: u64,
    /// The tables' fraction of zero cells after squashing.
    pub zero_fraction: f64,
    /// The tables as a dense safetensors file.
    pub dense_bytes: u64,
    /// The tables dense plus zip (deflate level 6, one entry per tensor as `torch.save`'s zip).
    pub dense_zip_bytes: u64,
    /// The tables as a compact safetensors file, f32 values.
    pub compact_f32_bytes: u64,
    /// The same, int8 codes.
    pub compact_int8_bytes: u64,
    /// The same, int4 codes.
    pub compact_int4_bytes: u64,
    /// The MLP's f32 bytes (in every format as they are).
    pub mlp_bytes: u64,
}

impl MetaRow {
    /// The tables' bytes in `format`.
    pub fn bytes(&self, format: Format) -> u64 {
        match format {
            Format::Dense => self.dense_bytes,
            Format::Compact(Encoding::F32) => self.compact_f32_bytes,
            Format::Compact(Encoding::Int8) => self.compact_int8_bytes,
            Format::Compact(_) => self.compact_int4_bytes,
        }
    }
}

/// A row of `sparse_model_metrics.csv`: one model in one format on the test split.
#[derive(Debug, Clone)]
pub struct MetricRow {
    /// The dataset.
    pub dataset: &'static str,
    /// The grid config.
    pub config: GridConfig,
    /// The sparsity level.
    pub level: f64,
    /// The tables' format.
    pub format: Format,
    /// The tables' bytes in that format.
    pub bytes: u64,
    /// The metrics.
    pub quality: Quality,
}

/// A row of `dlrm_forward_time_info.csv`: the mean forward time of the fixed test batch.
#[derive(Debug, Clone)]
pub struct ForwardRow {
    /// The dataset.
    pub dataset: &'static str,
    /// The grid config.
    pub config: GridConfig,
    /// The sparsity level.
    pub level: f64,
    /// The seed's `dlrm_type`: the tables' format.
    pub format: Format,
    /// Seconds per forward (bottom MLP, lookups, interaction, top MLP), first run discarded.
    pub time_taken: f64,
    /// Of which the table lookups.
    pub lookup_time: f64,
}

/// Everything a sweep measured.
#[derive(Debug, Clone, Default)]
pub struct Results {
    /// Sizes and step times.
    pub metadata: Vec<MetaRow>,
    /// Quality per format.
    pub metrics: Vec<MetricRow>,
    /// Forward times per format.
    pub forward: Vec<ForwardRow>,
}

impl Results {
    /// Appends another sweep's rows.
    pub fn extend(&mut self, other: Results) {
        self.metadata.extend(other.metadata);
        self.metrics.extend(other.metrics);
        self.forward.extend(other.forward);
    }
}

/// What to sweep.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    /// The sparsity levels.
    pub levels: Vec<f64>,
    /// The configs.
    pub configs: Vec<GridConfig>,
    /// Timed forwards per model and format, after one discarded.
    pub timed_runs: usize,
}

/// The seed's state-dict name of table `t`, as its `add_data` names (`emb_l.0.weight` → `emb_l_0_weight`).
pub fn table_name(t: usize) -> String {
    format!("emb_l_{t}_weight")
}

fn deflated_len(bytes: &[u8]) -> Result<u64> {
    let mut enc = DeflateEncoder::new(Vec::with_capacity(bytes.len() / 2), Compression::new(6));
    enc.write_all(bytes)
        .and_then(|_| enc.finish())
        .map(|v| v.len() as u64)
        .map_err(|e| StudyError::io("deflating a table".into(), e))
}

/// Bytes of a dense safetensors file of these tensors (header and data).
fn dense_file_len(tensors: &[(String, &Tensor)]) -> Result<u64> {
    let views = tensors
        .iter()
        .map(|(n, t)| {
            let v = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                t.shape().to_vec(),
                t.as_bytes(),
            )
            .map_err(|e| StudyError::Data(format!("{n}: {e:?}")))?;
            Ok((n.clone(), v))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::tensor::serialize(views, &None)
        .map_err(|e| StudyError::Data(format!("serializing: {e:?}")))?;
    Ok(bytes.len() as u64)
}

/// Writes the compact file of `tables` (original values) under `masks`, returns its size.
fn write_compact(path: &Path, tables: &[Tensor], masks: &[Mask], enc: Encoding) -> Result<u64> {
    let infos: Vec<TensorInfo> = tables
        .iter()
        .enumerate()
        .map(|(t, w)| TensorInfo::new(table_name(t), FileDType::F32, w.shape().to_vec()))
        .collect();
    let opts = CompactOptions {
        encoding: Some(enc),
        ..Default::default()
    };
    let mut sink: Box<dyn TensorSink> = Box::new(CompactSink::create(path, &infos, None, opts)?);
    for (t, (w, m)) in tables.iter().zip(masks).enumerate() {
        sink.write_masked(&table_name(t), w.view(), m)?;
    }
    sink.finish()?.commit(CommitMode::Replace)?;
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|e| StudyError::io(format!("reading the size of {}", path.display()), e))
}

/// The test split prepared once: dense input and ids per table as i64 (the lookups' input).
pub struct TestBatch {
    dense: CTensor,
    ids: Vec<Vec<i64>>,
    labels: Vec<f32>,
}

impl TestBatch {
    /// The whole test split as one batch.
    pub fn new(split: &Split, n_dense: usize) -> Result<Self> {
        let idx: Vec<usize> = (0..split.len()).collect();
        let (dense, _, _) = gather(split, &idx, n_dense)?;
        let ids = split
            .ids
            .iter()
            .map(|t| t.iter().map(|&i| i as i64).collect())
            .collect();
        Ok(TestBatch {
            dense,
            ids,
            labels: split.labels.clone(),
        })
    }
}

/// One table lookup of a whole bag batch, into a candle `[B, 16]` tensor.
fn to_candle(t: &Tensor) -> Result<CTensor> {
    let s = t
        .as_slice::<f32>()
        .ok_or_else(|| StudyError::Data("lookup output is not f32".into()))?;
    Ok(CTensor::from_slice(s, (s.len() / DIM, DIM), &Device::Cpu)?)
}

/// Runs the forward `1 + runs` times with `lookup`, the first discarded; returns the
/// probabilities and the mean seconds (total, of which lookups).
fn timed_forward(
    model: &Dlrm,
    batch: &TestBatch,
    runs: usize,
    lookup: &dyn Fn(usize, &[i64]) -> Result<Tensor>,
) -> Result<(Vec<f32>, f64, f64)> {
    let (mut total, mut looked) = (0.0, 0.0);
    let mut probs = Vec::new();
    for run in 0..=runs {
        let t0 = Instant::now();
        let x = model.bottom(&batch.dense)?;
        let t1 = Instant::now();
        let embs = batch
            .ids
            .iter()
            .enumerate()
            .map(|(t, ids)| to_candle(&lookup(t, ids)?))
            .collect::<Result<Vec<_>>>()?;
        let lk = t1.elapsed().as_secs_f64();
        let p = candle_nn::ops::sigmoid(&model.top(&x, &embs)?)?.to_vec1::<f32>()?;
        let all = t0.elapsed().as_secs_f64();
        if run > 0 {
            total += all;
            looked += lk;
        }
        probs = p;
    }
    let n = runs.max(1) as f64;
    Ok((probs, total / n, looked / n))
}

/// Sweeps `opts` over the trained `model` of `ds`, writing scratch files under `work`.
pub fn sweep(
    ds: &Dataset,
    model: &Dlrm,
    opts: &SweepOptions,
    work: &Path,
    bar: &ProgressBar,
) -> Result<Results> {
    let trained = model.tables()?;
    let mlp = model.mlp_tensors()?;
    let mlp_bytes: u64 = mlp.iter().map(|(_, t)| t.size_in_bytes() as u64).sum();
    let mlp_zip: u64 = mlp
        .iter()
        .map(|(_, t)| deflated_len(t.as_bytes()))
        .sum::<Result<u64>>()?;
    let named: Vec<(String, &Tensor)> = trained
        .iter()
        .enumerate()
        .map(|(t, w)| (table_name(t), w))
        .collect();
    let dense_bytes = dense_file_len(&named)?;
    let batch = TestBatch::new(&ds.test, model.spec().bottom[0])?;
    let cells: usize = trained.iter().map(|t| t.numel()).sum();
    let mut out = Results::default();
    for &config in &opts.configs {
        for &level in &opts.levels {
            bar.set_message(format!("{} {} level {level:.2}", ds.name, config.label()));
            // The seed's loop: add every table, time step(), squash.
            let params: Vec<Parameter> =
                trained.iter().map(|t| Parameter::new(t.clone())).collect();
            let mut sp = DataNormSparsifier::data_norm(DataNormConfig {
                sparsity_level: level,
                sparse_block_shape: config.block,
                norm: config.norm,
                ..Default::default()
            })?;
            for (t, p) in params.iter().enumerate() {
                sp.add_data(&table_name(t), p)?;
            }
            let t0 = Instant::now();
            sp.step()?;
            let step_time_sec = t0.elapsed().as_secs_f64();
            let masks: Vec<Mask> = (0..params.len())
                .map(|t| sp.get_mask(&table_name(t)).cloned())
                .collect::<data_sparsifier::Result<_>>()?;
            sp.squash_mask(None, SquashOptions::default())?;
            let squashed: Vec<Tensor> = params.iter().map(|p| p.snapshot()).collect();
            let zeros: usize = squashed
                .iter()
                .map(|t| {
                    t.as_slice::<f32>()
                        .map_or(0, |s| s.iter().filter(|&&x| x == 0.0).count())
                })
                .sum();
            let tables_zip: u64 = squashed
                .iter()
                .map(|t| deflated_len(t.as_bytes()))
                .sum::<Result<u64>>()?;

            let mut sizes = [0u64; 3];
            let mut files = Vec::new();
            for (k, enc) in [Encoding::F32, Encoding::Int8, Encoding::Int4]
                .into_iter()
                .enumerate()
            {
                let path = work.join(format!(
                    "{}-{}-{level}-{enc}.safetensors",
                    ds.name,
                    config.label()
                ));
                sizes[k] = write_compact(&path, &trained, &masks, enc)?;
                files.push((enc, path));
            }
            let meta = MetaRow {
                dataset: ds.name,
                config,
                level,
                step_time_sec,
                zip_file_size: (tables_zip + mlp_zip) >> 20,
                model_zip_bytes: tables_zip + mlp_zip,
                zero_fraction: zeros as f64 / cells.max(1) as f64,
                dense_bytes,
                dense_zip_bytes: tables_zip,
                compact_f32_bytes: sizes[0],
                compact_int8_bytes: sizes[1],
                compact_int4_bytes: sizes[2],
                mlp_bytes,
            };

            // Dense: the squashed tables with the library's dense EmbeddingBag.
            let dense_bags = squashed
                .iter()
                .map(|t| EmbeddingBag::from_weight(t.clone(), BagMode::Sum))
                .collect::<data_sparsifier::Result<Vec<_>>>()?;
            let mut record = |format: Format, r: (Vec<f32>, f64, f64)| {
                out.metrics.push(MetricRow {
                    dataset: ds.name,
                    config,
                    level,
                    format,
                    bytes: meta.bytes(format),
                    quality: quality(&r.0, &batch.labels),
                });
                out.forward.push(ForwardRow {
                    dataset: ds.name,
                    config,
                    level,
                    format,
                    time_taken: r.1,
                    lookup_time: r.2,
                });
            };
            let r = timed_forward(model, &batch, opts.timed_runs, &|t, ids| {
                Ok(dense_bags[t].forward(ids, Bags::Fixed { bag_size: 1 }, None)?)
            })?;
            record(Format::Dense, r);
            drop(dense_bags);
            // Compact: lookups read the file's tables directly (memory-mapped, not expanded).
            for (enc, path) in &files {
                let src = SafetensorsSource::read(path)?;
                let file = CompactFile::read(&src, &path.display().to_string())?;
                let tables = (0..trained.len())
                    .map(|t| {
                        file.table(&table_name(t)).ok_or_else(|| {
                            StudyError::Data(format!(
                                "{}: no table {}",
                                path.display(),
                                table_name(t)
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let bags = tables
                    .iter()
                    .map(|t| CompactEmbeddingBag::new(t, BagMode::Sum, None))
                    .collect::<data_sparsifier::Result<Vec<_>>>()?;
                let r = timed_forward(model, &batch, opts.timed_runs, &|t, ids| {
                    Ok(bags[t].forward(ids, Bags::Fixed { bag_size: 1 }, None)?)
                })?;
                record(Format::Compact(*enc), r);
            }
            for (_, path) in &files {
                let _ = std::fs::remove_file(path);
            }
            out.metadata.push(meta);
            bar.inc(1);
        }
    }
    Ok(out)
}
