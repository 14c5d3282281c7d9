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

use data_sparsifier::io::AtomicFile;
use data_sparsifier::safetensors_file::{SafetensorsWriter, TensorHeader};
use data_sparsifier::{
    validate_name, with_dtype, write_state_file_uncommitted, DataKind, EntryView, Mask, Tensor,
    UpdateMask,
};
use serde::Serialize;

use crate::checkpoint::{sparsify_shape, Checkpoint, TypedData};
use crate::config_file::{resolve, ConfigFile};
use crate::error::{CliError, Result};
use crate::report::{self, Table};
use data_sparsifier::norm::{compute_mask, DataNorm, DataNormConfig, DataNormPatch};

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
    /// Config flags (override the config file's defaults).
    pub flags: DataNormPatch,
    /// `--config` file.
    pub config: Option<PathBuf>,
    /// `--masks` output.
    pub masks: Option<PathBuf>,
    /// `--state` output.
    pub state: Option<PathBuf>,
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
    /// The config it was sparsified with.
    pub config: DataNormConfig,
    /// Fraction of elements the mask zeroes.
    pub sparsity: f64,
    /// Number of elements the mask zeroes.
    pub zeroed: u64,
    /// Number of elements.
    pub numel: u64,
    /// Whether its bytes were read in place from the map (false: copied, being unaligned).
    pub zero_copy: bool,
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
    /// Size of the input file.
    pub bytes: u64,
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
    /// The output file.
    pub output: String,
    /// The masks file, if written.
    pub masks: Option<String>,
    /// The state file, if written.
    pub state: Option<String>,
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
                report::config(&r.config),
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
        if let Some(p) = tt.peak_alloc_bytes {
            out.push_str(&format!(
                "peak heap memory: {} (the input is memory-mapped, not read into memory)\n",
                report::bytes(p)
            ));
        }
        out.push_str(&format!("wrote {}", self.output));
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
    sparsifier: &'static str,
    tensors: BTreeMap<&'a str, &'a DataNormConfig>,
}

/// A path's canonical form; for a file that does not exist yet, its parent's canonical form joined
/// with its name.
fn canonical(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = std::fs::canonicalize(p) {
        return Some(c);
    }
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(parent).ok()?.join(p.file_name()?))
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
    let mut roles: Vec<(String, &Path)> = vec![("the input".into(), &opts.input)];
    let outs: Vec<(&str, &Path)> = [
        Some(("--output", opts.output.as_path())),
        opts.masks.as_deref().map(|p| ("--masks", p)),
        opts.state.as_deref().map(|p| ("--state", p)),
    ]
    .into_iter()
    .flatten()
    .collect();
    for (flag, p) in outs {
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
        if std::fs::symlink_metadata(p).is_ok() && !opts.force {
            return Err(CliError::OutputExists {
                path: p.display().to_string(),
            });
        }
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
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

/// Puts written, fsynced temp files in place, in order (the main output last). Without `force`
/// none replaces anything, even a file that appeared during the run (a no-clobber commit). If a
/// commit fails, the outputs this run already put in place that did not exist before are removed
/// again, and the remaining temp files are discarded: a failed run leaves no new file. (A file
/// that `--force` already replaced cannot be brought back.)
fn commit_all(files: Vec<(&Path, AtomicFile)>, force: bool) -> Result<()> {
    let mut created: Vec<&Path> = Vec::new();
    let mut files = files.into_iter();
    for (path, file) in files.by_ref() {
        let existed = std::fs::symlink_metadata(path).is_ok();
        let committed = if force {
            file.commit()
        } else {
            file.commit_new()
        };
        if let Err(e) = committed {
            for p in &created {
                let _ = std::fs::remove_file(p);
            }
            // Dropping the rest removes their temp files.
            drop(files);
            let shown = path.display().to_string();
            return Err(match e {
                data_sparsifier::Error::Io { source, .. }
                    if !force && source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    CliError::OutputExists { path: shown }
                }
                e => CliError::lib(format!("writing {shown}"), e),
            });
        }
        if !existed {
            created.push(path);
        }
    }
    Ok(())
}

/// The name an entry gets in the `--state` file, whose names may not contain '.' or '/'.
pub fn state_name(name: &str) -> String {
    name.replace(['.', '/'], "_")
}

/// Elements squashed and written per piece (a multiple of 64, as `Mask::apply_into_at` needs).
const SQUASH_CHUNK: usize = 1 << 20;

/// Writes the bits of `mask` as dense `U8` (1 keep, 0 zero), 1 MiB at a time.
fn write_dense_mask(mask: &Mask, w: &mut SafetensorsWriter) -> data_sparsifier::Result<()> {
    const CHUNK: usize = 1 << 20;
    let words = mask.words();
    let n = mask.len();
    let mut buf = vec![0u8; CHUNK.min(n)];
    let mut start = 0;
    while start < n {
        let m = (n - start).min(CHUNK);
        for (j, b) in buf[..m].iter_mut().enumerate() {
            let i = start + j;
            *b = ((words[i / 64] >> (i % 64)) & 1) as u8;
        }
        w.write(&buf[..m])?;
        start += m;
    }
    Ok(())
}

/// Runs `sparsify run`.
pub fn run(opts: &RunOptions, ui: Ui) -> Result<RunReport> {
    let started = Instant::now();
    let alloc_base = crate::alloc::reset_peak();
    check_paths(opts)?;
    let ck = Checkpoint::open(&opts.input)?;
    let source = opts.input.display().to_string();
    let file = opts.config.as_ref().map(ConfigFile::load).transpose()?;
    let tensors = ck.tensors();
    let selected = crate::select::select(tensors, &opts.tensors, &opts.exclude, &source)?;
    let (_, configs) = resolve(file.as_ref(), &opts.flags, tensors, &selected, &source)?;
    let state_names: Vec<String> = if opts.state.is_some() {
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
        names
    } else {
        Vec::new()
    };

    // The plan.
    let sel_bytes: u64 = selected.iter().map(|&i| tensors[i].byte_len() as u64).sum();
    ui.say(format!(
        "sparsify: {} holds {} tensors ({}); sparsifying {} ({}), copying {} unchanged:",
        source,
        tensors.len(),
        report::bytes(ck.file_len() as u64),
        selected.len(),
        report::bytes(sel_bytes),
        tensors.len() - selected.len(),
    ));
    if !ui.quiet {
        let mut t = Table::new(&["  tensor", "shape", "dtype", "config"]);
        for (&i, c) in selected.iter().zip(&configs) {
            let e = &tensors[i];
            t.row(vec![
                format!("  {}", e.name),
                report::shape(&e.shape),
                format!("{:?}", e.dtype),
                report::config(c),
            ]);
        }
        crate::print_stderr(&t.render());
    }
    // zeros_per_block = 0 is valid (PyTorch accepts it) but prunes nothing: almost always a slip.
    let zero: Vec<&str> = selected
        .iter()
        .zip(&configs)
        .filter(|(_, c)| c.zeros_per_block == Some(0))
        .map(|(&i, _)| tensors[i].name.as_str())
        .collect();
    if !zero.is_empty() {
        let mut names = zero
            .iter()
            .take(3)
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>();
        if zero.len() > 3 {
            names.push("...".into());
        }
        ui.say(format!(
            "sparsify: warning: zeros_per_block is 0 for {} of the {} selected tensors ({}): nothing in them is zeroed; give --zeros-per-block 1 or more, or leave it unset for whole blocks",
            zero.len(),
            selected.len(),
            names.join(", ")
        ));
    }
    if let Some(old) = ck.metadata().and_then(|m| m.get(METADATA_KEY)) {
        let _ = old;
        ui.say(format!(
            "sparsify: note: the input already has a {METADATA_KEY:?} metadata entry; the output's replaces it"
        ));
    }

    // Output headers and metadata.
    let meta_json = serde_json::to_string(&OutputMeta {
        tool: "sparsify",
        version: env!("CARGO_PKG_VERSION"),
        sparsifier: DataNorm::new().name(),
        tensors: selected
            .iter()
            .zip(&configs)
            .map(|(&i, c)| (tensors[i].name.as_str(), c))
            .collect(),
    })
    .map_err(|e| CliError::Usage(format!("cannot encode the config as JSON: {e}")))?;
    let mut metadata = ck.metadata().cloned().unwrap_or_default();
    metadata.insert(METADATA_KEY.to_string(), meta_json.clone());
    let headers: Vec<TensorHeader> = tensors
        .iter()
        .map(|t| TensorHeader::new(t.name.clone(), t.dtype, t.shape.clone()))
        .collect();
    let lib = |what: &str, p: &Path| {
        let s = format!("{what} {}", p.display());
        move |e| CliError::lib(s, e)
    };
    let mut out = SafetensorsWriter::create(&opts.output, &headers, Some(&metadata))
        .map_err(lib("writing", &opts.output))?;
    let mut masks_out = match &opts.masks {
        Some(p) => {
            let mh: Vec<TensorHeader> = selected
                .iter()
                .map(|&i| {
                    let t = &tensors[i];
                    TensorHeader::new(t.name.clone(), safetensors::Dtype::U8, t.shape.clone())
                })
                .collect();
            let meta = BTreeMap::from([(METADATA_KEY.to_string(), meta_json.clone())]);
            Some(SafetensorsWriter::create(p, &mh, Some(&meta)).map_err(lib("writing", p))?)
        }
        None => None,
    };

    // Stream.
    let pb = ui.progress(tensors.iter().map(|t| t.byte_len() as u64).sum());
    let mut which = vec![None; tensors.len()];
    for (k, &i) in selected.iter().enumerate() {
        which[i] = Some(k);
    }
    let mut reports = Vec::with_capacity(selected.len());
    let mut kept_masks: Vec<Mask> = Vec::new();
    for (i, t) in tensors.iter().enumerate() {
        let bytes = ck.bytes(t);
        let Some(k) = which[i] else {
            for chunk in bytes.chunks(64 << 20) {
                out.write(chunk).map_err(lib("writing", &opts.output))?;
                if let Some(pb) = &pb {
                    pb.inc(chunk.len() as u64);
                }
            }
            continue;
        };
        if let Some(pb) = &pb {
            pb.set_message(t.name.clone());
        }
        let cfg = &configs[k];
        let t0 = Instant::now();
        let ctx = || format!("sparsifying tensor {:?}", t.name);
        let dtype = t.float_dtype().ok_or_else(|| {
            CliError::Selection(format!("tensor {:?} is not floating point", t.name))
        })?;
        let data = TypedData::new(dtype, bytes)?;
        let shape = sparsify_shape(&t.shape);
        let view = data.view(&shape)?;
        let mut mask = Mask::ones(shape.clone());
        compute_mask(&t.name, view, cfg, &mut mask).map_err(|e| match e {
            // The library's message names the config key; here the fix is a flag.
            data_sparsifier::Error::NanInData { index, row, col, .. } => CliError::Data(format!(
                "tensor {:?} contains NaN at flat index {index} (row {row}, col {col} of its {} view): clean the data, or pass --nan-policy rank-last (nan_policy = \"rank_last\" in a --config file) to keep NaN blocks unpruned as PyTorch does",
                t.name,
                report::shape(&shape)
            )),
            e => CliError::lib(ctx(), e),
        })?;
        let t1 = Instant::now();
        {
            // `mask · data`, streamed through one small buffer: no tensor-sized allocation.
            let n = view.numel();
            let mut buf = Tensor::zeros(dtype, [SQUASH_CHUNK.min(n)]);
            with_dtype!(dtype, T => {
                let (Some(src), Some(dst)) = (view.as_slice::<T>(), buf.as_slice_mut::<T>())
                else {
                    // Both are `dtype` by construction; never skip a tensor's bytes silently.
                    return Err(CliError::Usage(format!(
                        "internal error (a bug in sparsify, please report it): {}: the data is not {dtype} as its header says",
                        ctx()
                    )));
                };
                for start in (0..n).step_by(SQUASH_CHUNK) {
                    let len = (n - start).min(SQUASH_CHUNK);
                    mask.apply_into_at(start, &src[start..start + len], &mut dst[..len])
                        .map_err(|e| CliError::lib(ctx(), e))?;
                    let bytes: &[u8] = bytemuck::cast_slice(&dst[..len]);
                    out.write(bytes).map_err(lib("writing", &opts.output))?;
                }
            });
        }
        if let (Some(w), Some(p)) = (masks_out.as_mut(), opts.masks.as_ref()) {
            write_dense_mask(&mask, w).map_err(lib("writing", p))?;
        }
        let t2 = Instant::now();
        let zeroed = mask.count_zeroed() as u64;
        reports.push(TensorReport {
            name: t.name.clone(),
            dtype: format!("{:?}", t.dtype),
            shape: t.shape.clone(),
            bytes: bytes.len() as u64,
            config: cfg.clone(),
            sparsity: if mask.is_empty() {
                0.0
            } else {
                zeroed as f64 / mask.len() as f64
            },
            zeroed,
            numel: mask.len() as u64,
            zero_copy: !data.is_copy(),
            mask_seconds: (t1 - t0).as_secs_f64(),
            write_seconds: (t2 - t1).as_secs_f64(),
            seconds: (t2 - t0).as_secs_f64(),
        });
        if opts.state.is_some() {
            kept_masks.push(mask);
        }
        if let Some(pb) = &pb {
            pb.inc(bytes.len() as u64);
        }
    }

    // Written, fsynced, uncommitted outputs, in the order they are put in place.
    let mut pending: Vec<(&Path, AtomicFile)> = Vec::new();
    // The state file: the original data (views into the map) and the masks.
    if let Some(path) = &opts.state {
        if let Some(pb) = &pb {
            pb.set_message("writing state");
        }
        let datas: Vec<TypedData> = selected
            .iter()
            .map(|&i| {
                let t = &tensors[i];
                let dtype = t.float_dtype().ok_or_else(|| {
                    CliError::Selection(format!("tensor {:?} is not floating point", t.name))
                })?;
                TypedData::new(dtype, ck.bytes(t))
            })
            .collect::<Result<_>>()?;
        let shapes: Vec<Vec<usize>> = selected
            .iter()
            .map(|&i| sparsify_shape(&tensors[i].shape))
            .collect();
        let mut entries = Vec::with_capacity(selected.len());
        for k in 0..selected.len() {
            entries.push(EntryView {
                name: state_names[k].as_str(),
                kind: DataKind::Tensor,
                data: datas[k].view(&shapes[k])?,
                mask: &kept_masks[k],
                config: &configs[k],
                state: &(),
                parametrized: true,
            });
        }
        let names: serde_json::Map<String, serde_json::Value> = selected
            .iter()
            .zip(&state_names)
            .map(|(&i, n)| (n.clone(), serde_json::Value::from(tensors[i].name.clone())))
            .collect();
        // DataNormSparsifier holds at most 2-D data, so N-D tensors are stored as the 2-D view they
        // were sparsified as; their real shapes are recorded here.
        let real_shapes: serde_json::Map<String, serde_json::Value> = selected
            .iter()
            .zip(&state_names)
            .map(|(&i, n)| (n.clone(), serde_json::json!(tensors[i].shape)))
            .collect();
        let extra = BTreeMap::from([(
            METADATA_KEY.to_string(),
            serde_json::json!({
                "version": env!("CARGO_PKG_VERSION"),
                "input": source,
                "names": names,
                "shapes": real_shapes,
            }),
        )]);
        let f = write_state_file_uncommitted(path, DataNorm::new().name(), &entries, &extra)
            .map_err(lib("writing", path))?;
        pending.push((path.as_path(), f));
    }
    // Every output is complete and fsynced before any of them is put in place; the output last.
    if let (Some(w), Some(p)) = (masks_out, opts.masks.as_ref()) {
        pending.push((p, w.finish_uncommitted().map_err(lib("writing", p))?));
    }
    let f = out
        .finish_uncommitted()
        .map_err(lib("writing", &opts.output))?;
    pending.push((&opts.output, f));
    commit_all(pending, opts.force)?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }

    let seconds = started.elapsed().as_secs_f64();
    let zeroed: u64 = reports.iter().map(|r| r.zeroed).sum();
    let numel: u64 = reports.iter().map(|r| r.numel).sum();
    let mask_seconds: f64 = reports.iter().map(|r| r.mask_seconds).sum();
    let file_bytes = ck.file_len() as u64;
    Ok(RunReport {
        version: env!("CARGO_PKG_VERSION").to_string(),
        input: source,
        output: opts.output.display().to_string(),
        masks: opts.masks.as_ref().map(|p| p.display().to_string()),
        state: opts.state.as_ref().map(|p| p.display().to_string()),
        totals: RunTotals {
            tensors: tensors.len(),
            sparsified: selected.len(),
            copied: tensors.len() - selected.len(),
            bytes: file_bytes,
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    fn pending<'a>(paths: &[&'a Path]) -> Vec<(&'a Path, AtomicFile)> {
        paths
            .iter()
            .map(|&p| {
                let mut f = AtomicFile::create(p).unwrap();
                f.write_all(b"new").unwrap();
                (p, f)
            })
            .collect()
    }

    #[test]
    fn commit_all_is_all_or_nothing_for_new_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = (
            dir.path().join("a"),
            dir.path().join("b"),
            dir.path().join("c"),
        );
        // Without --force, "c" appearing after the checks stops the run: "a" and "b", already in
        // place, are removed again, and "c" is left alone.
        let files = pending(&[&a, &b, &c]);
        std::fs::write(&c, b"someone else's").unwrap();
        let e = commit_all(files, false).unwrap_err().to_string();
        assert!(e.contains("already exists") && e.contains("--force"), "{e}");
        assert_eq!(names(dir.path()), ["c"]);
        assert_eq!(std::fs::read(&c).unwrap(), b"someone else's");

        // With --force: a file that existed is replaced (and stays replaced), a new one is removed
        // again when a later commit fails (here a non-empty directory blocks the rename).
        std::fs::remove_file(&c).unwrap();
        std::fs::write(&a, b"old").unwrap();
        let files = pending(&[&a, &b, &c]);
        std::fs::create_dir(&c).unwrap();
        std::fs::write(c.join("x"), b"").unwrap();
        assert!(commit_all(files, true).is_err());
        assert_eq!(names(dir.path()), ["a", "c"]);
        assert_eq!(std::fs::read(&a).unwrap(), b"new");

        // All good: all three in place.
        std::fs::remove_dir_all(&c).unwrap();
        commit_all(pending(&[&a, &b, &c]), true).unwrap();
        assert_eq!(names(dir.path()), ["a", "b", "c"]);
    }
}
