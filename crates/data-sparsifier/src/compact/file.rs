//! Compact files: [`CompactSink`] writes one, [`CompactFile`] reads one through a
//! [`TensorSource`], [`expand`] writes it back dense.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::table::{CompactOptions, CompactTable};
use super::{
    FileMeta, BLOCKS_SUFFIX, FORMAT_NAME, FORMAT_VERSION, METADATA_KEY, PARAMS_SUFFIX,
    REMAP_SUFFIX, VALUES_SUFFIX,
};
use crate::dtype::Element;
use crate::error::{Error, Result};
use crate::format::safetensors::SafetensorsWriter;
use crate::format::{FileDType, Staged, TensorInfo, TensorSink, TensorSource};
use crate::mask::Mask;
use crate::tensor::TensorView;

/// What the sink holds until [`TensorSink::finish`]: the header needs every size first.
enum Pending {
    Raw(TensorInfo, Vec<u8>),
    Table(String, Box<CompactTable<'static>>),
}

/// The tensors of one pending entry as stored: (info, bytes).
fn parts(p: &Pending) -> Vec<(TensorInfo, std::borrow::Cow<'_, [u8]>)> {
    use std::borrow::Cow;
    match p {
        Pending::Raw(info, bytes) => vec![(info.clone(), Cow::Borrowed(bytes.as_slice()))],
        Pending::Table(name, t) => {
            let i = t.info();
            let mut out = vec![(
                TensorInfo::new(
                    format!("{name}{BLOCKS_SUFFIX}"),
                    FileDType::U8,
                    [(i.stored_rows * i.blocks_per_row()).div_ceil(8)],
                ),
                Cow::Owned(t.blocks_bytes()),
            )];
            if let Some(r) = t.remap_bytes() {
                out.push((
                    TensorInfo::new(format!("{name}{REMAP_SUFFIX}"), FileDType::I32, [i.rows]),
                    Cow::Borrowed(r),
                ));
            }
            if let (Some(b), Some(d)) = (t.params_bytes(), i.encoding.params_dtype()) {
                out.push((
                    TensorInfo::new(format!("{name}{PARAMS_SUFFIX}"), d, [i.stored_rows, 2]),
                    Cow::Owned(b),
                ));
            }
            out.push((
                TensorInfo::new(
                    format!("{name}{VALUES_SUFFIX}"),
                    i.encoding.values_dtype(),
                    [t.values_bytes().len() / i.encoding.values_dtype().size_in_bytes()],
                ),
                Cow::Borrowed(t.values_bytes()),
            ));
            out
        }
    }
}

/// A [`TensorSink`] writing a compact file: each sparsified tensor as a [`CompactTable`] (its
/// kept blocks, block mask, remap), every other tensor as it is, and the [`FileMeta`] under
/// [`METADATA_KEY`] beside the caller's metadata.
///
/// The tensors are laid out by element size, largest first, so that every tensor's data is
/// aligned for its dtype and reads zero-copy from a memory map; `order` in the metadata keeps
/// the original order, which [`expand`] restores. The sink holds what it is given until
/// [`finish`](TensorSink::finish) (the header needs every size): the compact tables, and a copy
/// of each tensor stored as it is.
///
/// ```
/// use data_sparsifier::compact::{CompactFile, CompactOptions, CompactSink};
/// use data_sparsifier::format::safetensors::SafetensorsSource;
/// use data_sparsifier::format::{CommitMode, FileDType, TensorInfo, TensorSink};
/// use data_sparsifier::{Mask, Tensor};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("out.safetensors");
/// let infos = [TensorInfo::new("w", FileDType::F32, [2, 2]), TensorInfo::new("ids", FileDType::U8, [2])];
/// let mut sink: Box<dyn TensorSink> =
///     Box::new(CompactSink::create(&path, &infos, None, CompactOptions::default()).unwrap());
/// let w = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]).unwrap();
/// sink.write_masked("w", w.view(), &Mask::from_dense_u8([2, 2], &[1, 0, 0, 0]).unwrap()).unwrap();
/// sink.write_raw("ids", &[7, 8]).unwrap();
/// sink.finish().unwrap().commit(CommitMode::NoClobber).unwrap();
/// let src = SafetensorsSource::read(&path).unwrap();
/// let file = CompactFile::read(&src, "out.safetensors").unwrap();
/// let t = file.table("w").unwrap();
/// assert_eq!(t.info().values, 1);
/// assert_eq!(t.to_tensor().unwrap().to_f64_vec(), vec![1.0, 0.0, 0.0, 0.0]);
/// ```
pub struct CompactSink {
    path: PathBuf,
    declared: Vec<TensorInfo>,
    metadata: BTreeMap<String, String>,
    opts: CompactOptions,
    pending: Vec<Pending>,
}

impl CompactSink {
    /// A sink for `tensors` (all of them, in this order) writing to `path`, with the caller's
    /// `metadata` (its [`METADATA_KEY`] entry, if any, is replaced); every sparsified tensor is
    /// encoded with `opts`.
    pub fn create(
        path: impl AsRef<Path>,
        tensors: &[TensorInfo],
        metadata: Option<&BTreeMap<String, String>>,
        opts: CompactOptions,
    ) -> Result<Self> {
        Ok(CompactSink {
            path: path.as_ref().to_path_buf(),
            declared: tensors.to_vec(),
            metadata: metadata.cloned().unwrap_or_default(),
            opts,
            pending: Vec::with_capacity(tensors.len()),
        })
    }
    fn take(&self, name: &str) -> Result<TensorInfo> {
        match self.declared.get(self.pending.len()) {
            Some(t) if t.name == name => Ok(t.clone()),
            next => Err(Error::invalid_state(format!(
                "writing {}: tensor {name:?} is not the next one declared ({:?})",
                self.path.display(),
                next.map(|t| &t.name)
            ))),
        }
    }
}

impl CompactSink {
    /// The stored tensors and their bytes, in file order: largest elements first, so every
    /// offset is a multiple of each dtype's size.
    fn layout(&self) -> Vec<(TensorInfo, std::borrow::Cow<'_, [u8]>)> {
        let mut all: Vec<_> = self.pending.iter().flat_map(parts).collect();
        all.sort_by_key(|(i, _)| std::cmp::Reverse(i.dtype.size_in_bytes()));
        all
    }
}

impl TensorSink for CompactSink {
    fn write_raw(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let info = self.take(name)?;
        if bytes.len() != info.byte_len() {
            return Err(Error::invalid_state(format!(
                "writing {}: tensor {name:?} has {} bytes, {} declared",
                self.path.display(),
                bytes.len(),
                info.byte_len()
            )));
        }
        self.pending.push(Pending::Raw(info, bytes.to_vec()));
        Ok(())
    }
    fn write_masked(&mut self, name: &str, data: TensorView<'_>, mask: &Mask) -> Result<()> {
        self.take(name)?;
        let t = CompactTable::encode(data, mask, &self.opts).map_err(|e| e.with_data(name))?;
        self.pending
            .push(Pending::Table(name.to_string(), Box::new(t)));
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<Staged> {
        if self.pending.len() != self.declared.len() {
            return Err(Error::invalid_state(format!(
                "writing {}: {} of {} tensors written",
                self.path.display(),
                self.pending.len(),
                self.declared.len()
            )));
        }
        let meta = FileMeta {
            format: FORMAT_NAME.to_string(),
            version: FORMAT_VERSION,
            order: self.declared.iter().map(|t| t.name.clone()).collect(),
            tables: self
                .pending
                .iter()
                .filter_map(|p| match p {
                    Pending::Table(n, t) => Some((n.clone(), t.info().clone())),
                    Pending::Raw(..) => None,
                })
                .collect(),
        };
        let mut metadata = self.metadata.clone();
        metadata.insert(
            METADATA_KEY.to_string(),
            serde_json::to_string(&meta).map_err(|e| Error::invalid_state(e.to_string()))?,
        );
        let all = self.layout();
        let infos: Vec<TensorInfo> = all.iter().map(|(i, _)| i.clone()).collect();
        let mut w = SafetensorsWriter::create(&self.path, &infos, Some(&metadata))?;
        for (_, bytes) in &all {
            w.write(bytes)?;
        }
        Ok(Staged::one(w.finish_uncommitted()?))
    }
    fn stored_tensors(&self) -> Option<Vec<TensorInfo>> {
        Some(self.layout().into_iter().map(|(i, _)| i).collect())
    }
}

/// One entry of a compact file, in the dense file's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// A tensor stored as it is: its index in the source.
    Raw(usize),
    /// A compact table: its index in [`CompactFile::tables`].
    Table(usize),
}

/// A compact file read through a [`TensorSource`] (zero-copy for the values and remaps the
/// source's bytes hold aligned), every table checked: a truncated or tampered file is an
/// [`Error::InvalidCompact`] (or the source's own error), a file without compact metadata an
/// [`Error::NotCompact`].
pub struct CompactFile<'a, S: TensorSource + ?Sized> {
    source: &'a S,
    meta: FileMeta,
    entries: Vec<(String, Entry)>,
    tables: Vec<(String, CompactTable<'a>)>,
}

impl<'a, S: TensorSource + ?Sized> CompactFile<'a, S> {
    /// Reads and checks the compact file in `source`; `name` names it in errors.
    pub fn read(source: &'a S, name: &str) -> Result<Self> {
        let with_source = |e: Error| match e {
            Error::InvalidCompact { table, message, .. } => Error::InvalidCompact {
                source_name: Some(name.to_string()),
                table,
                message,
            },
            e => e,
        };
        let meta = meta_of(source, name)?;
        let bad = |table: &str, m: String| Error::InvalidCompact {
            source_name: Some(name.to_string()),
            table: table.to_string(),
            message: m,
        };
        if meta.format != FORMAT_NAME || meta.version != FORMAT_VERSION {
            return Err(bad(
                "",
                format!(
                    "format {:?} version {} is not {FORMAT_NAME:?} version {FORMAT_VERSION} (written by another version?)",
                    meta.format, meta.version
                ),
            ));
        }
        let index: HashMap<&str, usize> = source
            .tensors()
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let mut used = vec![false; source.tensors().len()];
        let mut take = |n: &str| -> Option<usize> {
            let i = *index.get(n)?;
            (!std::mem::replace(&mut used[i], true)).then_some(i)
        };
        let mut entries = Vec::with_capacity(meta.order.len());
        let mut tables = Vec::with_capacity(meta.tables.len());
        for n in &meta.order {
            if let Some(info) = meta.tables.get(n) {
                let part = |suffix: &str| format!("{n}{suffix}");
                let blocks = take(&part(BLOCKS_SUFFIX))
                    .ok_or_else(|| bad(n, format!("{} is missing", part(BLOCKS_SUFFIX))))?;
                let values = take(&part(VALUES_SUFFIX))
                    .ok_or_else(|| bad(n, format!("{} is missing", part(VALUES_SUFFIX))))?;
                let remap = take(&part(REMAP_SUFFIX));
                let params = take(&part(PARAMS_SUFFIX));
                let ts = source.tensors();
                if ts[blocks].dtype != FileDType::U8 {
                    return Err(bad(
                        n,
                        format!("{} is {}, not U8", part(BLOCKS_SUFFIX), ts[blocks].dtype),
                    ));
                }
                if let Some(r) = remap.filter(|&r| ts[r].dtype != FileDType::I32) {
                    return Err(bad(
                        n,
                        format!("{} is {}, not I32", part(REMAP_SUFFIX), ts[r].dtype),
                    ));
                }
                let t = CompactTable::from_parts(
                    n,
                    info.clone(),
                    source.bytes(blocks),
                    remap.map(|r| source.bytes(r)),
                    (ts[values].dtype, source.bytes(values)),
                    params.map(|p| (ts[p].dtype, source.bytes(p))),
                )
                .map_err(with_source)?;
                entries.push((n.clone(), Entry::Table(tables.len())));
                tables.push((n.clone(), t));
            } else {
                let i = take(n).ok_or_else(|| {
                    bad(
                        n,
                        "is listed in the metadata's order but not stored (or listed twice)".into(),
                    )
                })?;
                entries.push((n.clone(), Entry::Raw(i)));
            }
        }
        if meta.tables.len() != tables.len() {
            return Err(bad(
                "",
                "a table in the metadata is not in its order".into(),
            ));
        }
        if let Some(i) = used.iter().position(|u| !u) {
            return Err(bad(
                &source.tensors()[i].name,
                "is stored but not listed in the metadata's order".into(),
            ));
        }
        Ok(CompactFile {
            source,
            meta,
            entries,
            tables,
        })
    }
    /// The file's compact metadata.
    pub fn meta(&self) -> &FileMeta {
        &self.meta
    }
    /// Every tensor of the dense file, in its order.
    pub fn entries(&self) -> &[(String, Entry)] {
        &self.entries
    }
    /// The compact tables, in file order.
    pub fn tables(&self) -> &[(String, CompactTable<'a>)] {
        &self.tables
    }
    /// The compact table `name`.
    pub fn table(&self, name: &str) -> Option<&CompactTable<'a>> {
        self.tables.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
    /// The source.
    pub fn source(&self) -> &'a S {
        self.source
    }
    /// The dense file's tensors, in order.
    pub fn dense_infos(&self) -> Vec<TensorInfo> {
        self.entries
            .iter()
            .map(|(n, e)| match *e {
                Entry::Raw(i) => self.source.tensors()[i].clone(),
                Entry::Table(k) => {
                    let t = &self.tables[k].1;
                    TensorInfo::new(n.clone(), t.dtype().into(), t.info().shape.clone())
                }
            })
            .collect()
    }
}

/// The compact metadata of a source, or [`Error::NotCompact`].
fn meta_of<S: TensorSource + ?Sized>(source: &S, name: &str) -> Result<FileMeta> {
    let json = source
        .metadata()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| Error::NotCompact {
            source_name: name.to_string(),
            key: METADATA_KEY,
            fix: "it is a dense file already (write a compact one with `sparsify run --format compact`)",
        })?;
    serde_json::from_str(json).map_err(|e| Error::InvalidCompact {
        source_name: Some(name.to_string()),
        table: String::new(),
        message: format!("the {METADATA_KEY:?} metadata is not valid: {e}"),
    })
}

/// Cells expanded per piece written.
const EXPAND_CHUNK: usize = 1 << 20;

/// Writes the dense form of a compact file to `path`: every tensor in the original order, tables
/// expanded (`mask · data` in their dtype and shape), the metadata without [`METADATA_KEY`]. A
/// standard safetensors file that PyTorch loads; fsynced, not yet in place (commit the
/// [`Staged`]).
///
/// ```
/// use data_sparsifier::compact::{expand, CompactFile, CompactOptions, CompactSink};
/// use data_sparsifier::format::safetensors::SafetensorsSource;
/// use data_sparsifier::format::{CommitMode, FileDType, TensorInfo, TensorSink, TensorSource};
/// use data_sparsifier::{Mask, Tensor};
/// let dir = tempfile::tempdir().unwrap();
/// let (c, d) = (dir.path().join("c.safetensors"), dir.path().join("d.safetensors"));
/// let infos = [TensorInfo::new("w", FileDType::F32, [1, 3])];
/// let mut sink = CompactSink::create(&c, &infos, None, CompactOptions::default()).unwrap();
/// let w = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [1, 3]).unwrap();
/// sink.write_masked("w", w.view(), &Mask::from_dense_u8([1, 3], &[0, 1, 0]).unwrap()).unwrap();
/// Box::new(sink).finish().unwrap().commit(CommitMode::NoClobber).unwrap();
/// let src = SafetensorsSource::read(&c).unwrap();
/// expand(&CompactFile::read(&src, "c").unwrap(), &d).unwrap().commit(CommitMode::NoClobber).unwrap();
/// let dense = SafetensorsSource::read(&d).unwrap();
/// assert_eq!(dense.data(0).unwrap().view(&[3]).unwrap().to_tensor().to_f64_vec(), vec![0.0, 2.0, 0.0]);
/// ```
pub fn expand<S: TensorSource + ?Sized>(
    file: &CompactFile<'_, S>,
    path: impl AsRef<Path>,
) -> Result<Staged> {
    let mut metadata = file.source.metadata().cloned().unwrap_or_default();
    metadata.remove(METADATA_KEY);
    let infos = file.dense_infos();
    let meta = (!metadata.is_empty()).then_some(&metadata);
    let mut w = SafetensorsWriter::create(path.as_ref(), &infos, meta)?;
    for (_, e) in &file.entries {
        match *e {
            Entry::Raw(i) => w.write(file.source.bytes(i))?,
            Entry::Table(k) => write_expanded(&file.tables[k].1, &mut w)?,
        }
    }
    Ok(Staged::one(w.finish_uncommitted()?))
}

fn write_expanded(t: &CompactTable<'_>, w: &mut SafetensorsWriter) -> Result<()> {
    let (rows, cols) = (t.info().rows, t.info().cols);
    if cols == 0 || rows == 0 {
        return Ok(());
    }
    let per = (EXPAND_CHUNK / cols).max(1);
    crate::with_dtype!(t.dtype(), T => {
        let mut buf = vec![T::ZERO; per.min(rows) * cols];
        for r0 in (0..rows).step_by(per) {
            let r1 = (r0 + per).min(rows);
            let out = &mut buf[..(r1 - r0) * cols];
            t.expand_rows_into::<T>(r0..r1, out)?;
            w.write(bytemuck::cast_slice(out))?;
        }
    });
    Ok(())
}
