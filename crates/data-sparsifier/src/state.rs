//! Saved state: [`StateDict`], and its on-disk form, one safetensors file.
//!
//! # File layout (format version 1)
//!
//! A standard safetensors file, readable without this library:
//!
//! * tensor `data/NAME`: the entry's data as it is (the original while parametrized; after a squash,
//!   `mask · data`, or the untouched data if squashed without `leave_parametrized`), in its own dtype
//!   and shape;
//! * tensor `mask/NAME`: the mask, `U8`, shape `[ceil(numel / 8)]`, bit-packed: element `i` (row-major)
//!   is bit `i % 8` of byte `i / 8` (numpy: `np.unpackbits(m, bitorder="little")[:numel]`);
//! * `__metadata__`:
//!   * `format` = `"data-sparsifier/state"`,
//!   * `format_version` = `"1"`,
//!   * `state` = JSON: `{"sparsifier", "mask_update_enabled", "entries": [{"name", "kind", "dtype",
//!     "shape", "parametrized", "config", "state"}], "extra": {...}}`.
//!
//! Entries keep their order. `extra` carries state of other components saved alongside, such as a data
//! scheduler's. Loading checks every field against the tensors and returns an error, never panics,
//! on a truncated or tampered file.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::DataKind;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::safetensors::{self as st_format, SafetensorsWriter};
use crate::format::{FileDType, TensorInfo, TensorSink};
use crate::handle::Handle;
use crate::io::{CommitMode, MappedFile, Staged};
use crate::mask::Mask;
use crate::sparsifier::{
    check_mask_fits, validate_name, DataSparsifier, Entry, LoadOptions, UpdateMask,
};
use crate::tensor::{Parameter, Tensor, TensorView};

/// The `format` metadata value of a saved state.
pub const FORMAT: &str = "data-sparsifier/state";
/// The current format version.
pub const FORMAT_VERSION: u32 = 1;

/// A snapshot of one entry.
///
/// ```
/// use data_sparsifier::{DataKind, DataNormConfig, DataNormSparsifier, Tensor};
/// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
/// sp.add_data("x", Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [2, 4]).unwrap())
///     .unwrap();
/// sp.step().unwrap();
/// let sd = sp.state_dict().unwrap();
/// let e = &sd.entries[0];
/// assert_eq!((e.name.as_str(), e.kind, e.parametrized), ("x", DataKind::Tensor, true));
/// assert_eq!(e.data.to_f64_vec(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]); // the original
/// assert_eq!(e.mask.count_kept(), 4);
/// assert_eq!(e.config.sparsity_level, 0.5);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EntryState<C, S> {
    /// The data name.
    pub name: String,
    /// Its kind.
    pub kind: DataKind,
    /// A copy of its data (original, or squashed).
    pub data: Tensor,
    /// Its mask.
    pub mask: Mask,
    /// Its config.
    pub config: C,
    /// The implementer's per-name state.
    pub state: S,
    /// False once squashed.
    pub parametrized: bool,
}

/// A snapshot of a whole sparsifier: what [`DataSparsifier::state_dict`] returns and
/// [`DataSparsifier::load_state_dict`] takes. Unlike PyTorch's, it is a real snapshot: later changes
/// to the sparsifier or its data do not show through it.
///
/// ```
/// use data_sparsifier::{DataNormConfig, DataNormSparsifier, Parameter, Tensor};
/// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
/// let w = Parameter::new(Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [1, 4]).unwrap());
/// sp.add_data("w", &w).unwrap();
/// let mut sd = sp.state_dict().unwrap();
/// w.set(Tensor::from_vec(vec![0.0f32; 4], [1, 4]).unwrap());
/// assert_eq!(sd.entries[0].data.to_f64_vec(), vec![1.0, 2.0, 3.0, 4.0]); // a real snapshot
/// assert_eq!(sd.sparsifier, "DataNormSparsifier");
/// sd.extra.insert("epoch".into(), serde_json::json!(3));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct StateDict<C, S> {
    /// The implementer's name ([`UpdateMask::name`]).
    pub sparsifier: String,
    /// Whether `step` updates masks.
    pub mask_update_enabled: bool,
    /// The entries, in insertion order.
    pub entries: Vec<EntryState<C, S>>,
    /// State of other components saved alongside (e.g. `"scheduler"`).
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryMeta<C, S> {
    name: String,
    kind: DataKind,
    dtype: DType,
    shape: Vec<usize>,
    parametrized: bool,
    config: C,
    state: S,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateMeta<C, S> {
    sparsifier: String,
    mask_update_enabled: bool,
    entries: Vec<EntryMeta<C, S>>,
    #[serde(default)]
    extra: BTreeMap<String, serde_json::Value>,
}

fn data_key(name: &str) -> String {
    format!("data/{name}")
}
fn mask_key(name: &str) -> String {
    format!("mask/{name}")
}

/// One entry as the state file's header describes it: everything but its data and mask bytes.
#[derive(Debug, Clone)]
pub struct EntryHeader<'a, C, S> {
    /// The data name.
    pub name: &'a str,
    /// Its kind.
    pub kind: DataKind,
    /// Its dtype.
    pub dtype: DType,
    /// Its shape (the mask's too).
    pub shape: Vec<usize>,
    /// False if the data is already squashed.
    pub parametrized: bool,
    /// Its config.
    pub config: &'a C,
    /// The implementer's per-name state.
    pub state: &'a S,
}

/// The header of a whole state file: what [`StateWriter::create`] writes before any data.
#[derive(Debug, Clone)]
pub struct StateHeader<'a, C, S> {
    /// The sparsifier's name (`UpdateMask::name`, e.g. `"DataNormSparsifier"`).
    pub sparsifier: &'a str,
    /// Whether mask updates are enabled (PyTorch's `enable_mask_update`).
    pub mask_update_enabled: bool,
    /// Every entry, in order.
    pub entries: &'a [EntryHeader<'a, C, S>],
    /// Extra JSON state of other components (e.g. a scheduler).
    pub extra: &'a BTreeMap<String, serde_json::Value>,
}

/// The one writer of state files, streaming: the header (every entry's name, dtype, shape,
/// config and state) first, then each entry's data and packed mask in order, so neither all the
/// data nor all the masks are ever held at once. [`DataSparsifier::save_state`],
/// [`StateDict::save`], [`write_state_file`] and the CLI's `--state` all write through it. It is
/// a [`TensorSink`]: tensors not declared are skipped.
///
/// ```
/// use data_sparsifier::state::{EntryHeader, StateHeader, StateWriter};
/// use data_sparsifier::{DType, DataKind, DataNormConfig, Mask, StateDict, Tensor};
/// let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]).unwrap();
/// let mask = Mask::from_dense_u8([2, 2], &[1, 0, 0, 1]).unwrap();
/// let cfg = DataNormConfig::default();
/// let header = EntryHeader { name: "t", kind: DataKind::Tensor, dtype: DType::F32, shape: vec![2, 2],
///                            parametrized: true, config: &cfg, state: &() };
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("state.safetensors");
/// let extra = Default::default();
/// let state = StateHeader { sparsifier: "DataNormSparsifier", mask_update_enabled: true,
///                           entries: &[header], extra: &extra };
/// let mut w = StateWriter::create(&path, &state).unwrap();
/// w.write_entry("t", t.view(), &mask).unwrap();
/// w.finish().unwrap().commit(Default::default()).unwrap();
/// assert_eq!(StateDict::<DataNormConfig, ()>::load(&path).unwrap().entries[0].mask, mask);
/// ```
pub struct StateWriter {
    w: SafetensorsWriter,
    /// Each entry's name, dtype and shape, in order.
    layout: Vec<(String, DType, Vec<usize>)>,
    /// The names entries are offered under as a [`TensorSink`] (the entry names by default).
    offered: Vec<String>,
    next: usize,
    path: String,
}

impl StateWriter {
    /// Writes the header of a state with these entries (in this order) and `extra`. Errors,
    /// writing nothing, on an invalid or repeated name.
    pub fn create<C: Serialize, S: Serialize>(
        path: impl AsRef<Path>,
        header: &StateHeader<'_, C, S>,
    ) -> Result<Self> {
        let StateHeader {
            sparsifier,
            mask_update_enabled,
            entries,
            extra,
        } = *header;
        let path = path.as_ref();
        for e in entries {
            validate_name(e.name)?;
        }
        let meta = StateMeta {
            sparsifier: sparsifier.to_string(),
            mask_update_enabled,
            entries: entries
                .iter()
                .map(|e| EntryMeta {
                    name: e.name.to_string(),
                    kind: e.kind,
                    dtype: e.dtype,
                    shape: e.shape.clone(),
                    parametrized: e.parametrized,
                    config: e.config,
                    state: e.state,
                })
                .collect(),
            extra: extra.clone(),
        };
        let json = serde_json::to_string(&meta)
            .map_err(|e| Error::invalid_state_from("cannot encode the state as JSON", e))?;
        let metadata = BTreeMap::from([
            ("format".to_string(), FORMAT.to_string()),
            ("format_version".to_string(), FORMAT_VERSION.to_string()),
            ("state".to_string(), json),
        ]);
        let mut headers = Vec::with_capacity(entries.len() * 2);
        for e in entries {
            let numel: usize = e.shape.iter().product();
            headers.push(TensorInfo::new(
                data_key(e.name),
                e.dtype.into(),
                e.shape.clone(),
            ));
            headers.push(TensorInfo::new(
                mask_key(e.name),
                FileDType::U8,
                [numel.div_ceil(8)],
            ));
        }
        Ok(StateWriter {
            w: SafetensorsWriter::create(path, &headers, Some(&metadata))?,
            layout: entries
                .iter()
                .map(|e| (e.name.to_string(), e.dtype, e.shape.clone()))
                .collect(),
            offered: entries.iter().map(|e| e.name.to_string()).collect(),
            next: 0,
            path: path.display().to_string(),
        })
    }

    /// As a [`TensorSink`], receives the entries under these names (one per entry, in order):
    /// the names of the source's tensors where the entries are named otherwise (the CLI's
    /// `--state` replaces '.' and '/' in entry names).
    pub fn offered_as(mut self, names: Vec<String>) -> Result<Self> {
        if names.len() != self.layout.len() {
            return Err(Error::invalid_state(format!(
                "writing {}: {} names for {} entries",
                self.path,
                names.len(),
                self.layout.len()
            )));
        }
        self.offered = names;
        Ok(self)
    }

    /// Writes the next entry's data and mask. Refuses (instead of writing a corrupt file) data
    /// that no longer has the dtype and shape the header was written with (another holder of a
    /// shared parameter may replace it while the file is written), or a mask of another shape.
    pub fn write_entry(&mut self, name: &str, data: TensorView<'_>, mask: &Mask) -> Result<()> {
        let Some((expected, dtype, shape)) = self.layout.get(self.next) else {
            return Err(Error::invalid_state(format!(
                "writing {}: entry {name:?} was not declared",
                self.path
            )));
        };
        if expected != name {
            return Err(Error::invalid_state(format!(
                "writing {}: entry {name:?} is not the next one declared ({expected:?})",
                self.path
            )));
        }
        if data.dtype() != *dtype || data.shape() != shape.as_slice() {
            return Err(Error::ShapeMismatch {
                what: format!(
                    "data {name:?} while it was being saved (it was replaced meanwhile; save again)"
                ),
                expected: shape.clone(),
                actual: data.shape().to_vec(),
            });
        }
        check_mask_fits(name, mask, shape)?;
        self.next += 1;
        self.w.write(data.data().as_bytes())?;
        self.w.write(&mask.to_packed_bytes())
    }

    /// Checks that every entry was written and fsyncs; see [`TensorSink::finish`].
    pub fn finish(self) -> Result<Staged> {
        Ok(Staged::one(self.w.finish_uncommitted()?))
    }
}

impl TensorSink for StateWriter {
    fn write_raw(&mut self, name: &str, _bytes: &[u8]) -> Result<()> {
        if self.offered.get(self.next).is_some_and(|n| n == name) {
            return Err(Error::invalid_state(format!(
                "writing {}: entry {name:?} is declared, but it was not sparsified",
                self.path
            )));
        }
        Ok(())
    }
    fn write_masked(&mut self, name: &str, data: TensorView<'_>, mask: &Mask) -> Result<()> {
        let entry = match self.offered.get(self.next) {
            Some(n) if n == name => self.layout[self.next].0.clone(),
            _ => {
                return Err(Error::invalid_state(format!(
                    "writing {}: tensor {name:?} is not the next one declared",
                    self.path
                )))
            }
        };
        self.write_entry(&entry, data, mask)
    }
    fn finish(self: Box<Self>) -> Result<Staged> {
        StateWriter::finish(*self)
    }
}

/// One entry of a state written straight from borrowed data, see [`write_state_file`].
///
/// ```
/// use data_sparsifier::state::{write_state_file, EntryView};
/// use data_sparsifier::{DataKind, DataNormConfig, Mask, StateDict, TensorView};
/// let values = [1.0f32, -2.0, 3.0];
/// let mut mask = Mask::ones([3]);
/// mask.set(0, false);
/// let entry = EntryView {
///     name: "x",
///     kind: DataKind::Tensor,
///     data: TensorView::new(&values[..], &[3]).unwrap(),
///     mask: &mask,
///     config: &DataNormConfig::default(),
///     state: &(),
///     parametrized: true,
/// };
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("state.safetensors");
/// write_state_file(&path, "DataNormSparsifier", &[entry], &Default::default()).unwrap();
/// let sd = StateDict::<DataNormConfig, ()>::load(&path).unwrap();
/// assert_eq!(sd.entries[0].mask, mask);
/// assert_eq!(sd.entries[0].data.to_f64_vec(), vec![1.0, -2.0, 3.0]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct EntryView<'a, C, S> {
    /// The data name.
    pub name: &'a str,
    /// Its kind.
    pub kind: DataKind,
    /// Its data (e.g. a view into a memory-mapped checkpoint).
    pub data: TensorView<'a>,
    /// Its mask.
    pub mask: &'a Mask,
    /// Its config.
    pub config: &'a C,
    /// The implementer's per-name state.
    pub state: &'a S,
    /// False if `data` is already squashed.
    pub parametrized: bool,
}

/// Writes a state file from borrowed views, without building a [`StateDict`] or a sparsifier.
/// The file loads with [`StateDict::load`] and [`DataSparsifier::load_state`].
///
/// ```
/// use std::collections::BTreeMap;
/// use data_sparsifier::state::{write_state_file, EntryView};
/// use data_sparsifier::{LoadOptions, DataKind, DataNormConfig, DataNormSparsifier, Mask, Tensor};
/// let table = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]).unwrap();
/// let mask = Mask::from_dense_u8([2, 2], &[1, 0, 0, 1]).unwrap();
/// let cfg = DataNormConfig::default();
/// let entries = [EntryView {
///     name: "t",
///     kind: DataKind::Tensor,
///     data: table.view(),
///     mask: &mask,
///     config: &cfg,
///     state: &(),
///     parametrized: true,
/// }];
/// let extra = BTreeMap::from([("note".to_string(), serde_json::json!("streamed"))]);
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("state.safetensors");
/// write_state_file(&path, "DataNormSparsifier", &entries, &extra).unwrap();
///
/// let mut sp = DataNormSparsifier::data_norm(cfg).unwrap();
/// assert_eq!(sp.load_state(&path, LoadOptions::default()).unwrap(), extra);
/// assert_eq!(sp.get_mask("t").unwrap(), &mask);
/// ```
pub fn write_state_file<C: Serialize, S: Serialize>(
    path: impl AsRef<Path>,
    sparsifier: &str,
    entries: &[EntryView<'_, C, S>],
    extra: &BTreeMap<String, serde_json::Value>,
) -> Result<()> {
    write_state_file_uncommitted(path, sparsifier, entries, extra)?.commit(CommitMode::Replace)
}

/// [`write_state_file`], fsynced but not committed: nothing is at `path` until the caller commits
/// the returned [`Staged`] file; dropping it discards it. For writing the state together with
/// other files.
pub fn write_state_file_uncommitted<C: Serialize, S: Serialize>(
    path: impl AsRef<Path>,
    sparsifier: &str,
    entries: &[EntryView<'_, C, S>],
    extra: &BTreeMap<String, serde_json::Value>,
) -> Result<Staged> {
    let headers: Vec<EntryHeader<'_, C, S>> = entries
        .iter()
        .map(|e| EntryHeader {
            name: e.name,
            kind: e.kind,
            dtype: e.data.dtype(),
            shape: e.data.shape().to_vec(),
            parametrized: e.parametrized,
            config: e.config,
            state: e.state,
        })
        .collect();
    for e in entries {
        check_mask_fits(e.name, e.mask, e.data.shape())?;
    }
    let header = StateHeader {
        sparsifier,
        mask_update_enabled: true,
        entries: &headers,
        extra,
    };
    let mut w = StateWriter::create(path, &header)?;
    for e in entries {
        w.write_entry(e.name, e.data, e.mask)?;
    }
    w.finish()
}

/// Errors unless `value` comes back equal from the JSON it is saved as. serde_json writes NaN and
/// infinities as `null`, which would make a saved file that cannot be loaded (or loads wrong).
fn check_json_round_trip<T>(name: &str, key: &'static str, value: &T) -> Result<()>
where
    T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let back = serde_json::to_value(value)
        .ok()
        .and_then(|v| serde_json::from_value::<T>(v).ok());
    if back.as_ref() != Some(value) {
        return Err(Error::invalid_config(
            name,
            key,
            format!("{value:?}"),
            "a value that survives saving as JSON: NaN and infinite floats cannot be saved \
             (JSON has no such numbers); use finite values",
        ));
    }
    Ok(())
}

impl<C, S> StateDict<C, S>
where
    C: Serialize + for<'de> Deserialize<'de>,
    S: Serialize + for<'de> Deserialize<'de>,
{
    /// Writes the state to `path` atomically (temp file, fsync, rename).
    ///
    /// Errors, writing nothing, if a config or state does not survive the JSON round trip (NaN or
    /// infinite floats) or a mask does not have its data's shape.
    ///
    /// ```
    /// use data_sparsifier::{DataNormConfig, DataNormSparsifier, StateDict, Tensor};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// sp.add_data("x", Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [1, 4]).unwrap()).unwrap();
    /// let mut sd = sp.state_dict().unwrap();
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("state.safetensors");
    /// sd.save(&path).unwrap();
    /// assert_eq!(StateDict::load(&path).unwrap(), sd);
    ///
    /// sd.entries[0].config.sparsity_level = f64::NAN; // JSON cannot hold NaN
    /// let other = dir.path().join("nan.safetensors");
    /// assert!(sd.save(&other).is_err());
    /// assert!(!other.exists());
    /// ```
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()>
    where
        C: PartialEq + std::fmt::Debug,
        S: PartialEq + std::fmt::Debug,
    {
        for e in &self.entries {
            check_json_round_trip(&e.name, "config", &e.config)?;
            check_json_round_trip(&e.name, "state", &e.state)?;
        }
        let headers: Vec<EntryHeader<'_, C, S>> = self
            .entries
            .iter()
            .map(|e| EntryHeader {
                name: &e.name,
                kind: e.kind,
                dtype: e.data.dtype(),
                shape: e.data.shape().to_vec(),
                parametrized: e.parametrized,
                config: &e.config,
                state: &e.state,
            })
            .collect();
        let header = StateHeader {
            sparsifier: &self.sparsifier,
            mask_update_enabled: self.mask_update_enabled,
            entries: &headers,
            extra: &self.extra,
        };
        let mut w = StateWriter::create(path, &header)?;
        for e in &self.entries {
            w.write_entry(&e.name, e.data.view(), &e.mask)?;
        }
        w.finish()?.commit(CommitMode::Replace)
    }

    /// Reads a state file into memory, checking every field. See
    /// [`load_mapped`](Self::load_mapped) for a file too large to read twice into memory.
    ///
    /// ```
    /// use data_sparsifier::{DataNormConfig, DataNormSparsifier, Error, SparsifierState, Tensor};
    /// use data_sparsifier::norm::DataNorm;
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("state.safetensors");
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// sp.add_data("x", Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [1, 4]).unwrap()).unwrap();
    /// sp.save_state(&path).unwrap();
    /// let sd = SparsifierState::<DataNorm>::load(&path).unwrap();
    /// assert_eq!(sd.entries[0].name, "x");
    ///
    /// std::fs::write(&path, b"not a state file").unwrap();
    /// assert!(matches!(SparsifierState::<DataNorm>::load(&path), Err(Error::Safetensors { .. })));
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_file_bytes(&bytes, path)
    }

    /// [`load`](Self::load) from a memory map: the file's pages are read once, straight into the
    /// loaded tensors, instead of into a buffer first.
    ///
    /// # Safety
    ///
    /// As [`MappedFile::open`]: the file must not be truncated or modified while it is loaded.
    pub unsafe fn load_mapped(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        // SAFETY: forwarded to the caller (this function's contract).
        let file = unsafe { MappedFile::open(path) }?;
        Self::from_file_bytes(file.bytes(), path)
    }

    fn from_file_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        Self::from_bytes(bytes, &path.display().to_string()).map_err(|e| match e {
            Error::InvalidState {
                source_name: None,
                message,
                source,
            } => Error::InvalidState {
                source_name: Some(path.display().to_string()),
                message,
                source,
            },
            other => other,
        })
    }

    /// Parses a state from the bytes of a safetensors file.
    ///
    /// ```
    /// use data_sparsifier::{DataNormConfig, DataNormSparsifier, StateDict, Tensor};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("state.safetensors");
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// sp.add_data("x", Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [1, 4]).unwrap()).unwrap();
    /// sp.save_state(&path).unwrap();
    ///
    /// let bytes = std::fs::read(&path).unwrap();
    /// let sd = StateDict::<DataNormConfig, ()>::from_bytes(&bytes, "in memory").unwrap();
    /// assert_eq!(sd, sp.state_dict().unwrap());
    /// // A truncated file is an error, not a panic.
    /// assert!(StateDict::<DataNormConfig, ()>::from_bytes(&bytes[..bytes.len() - 1], "cut").is_err());
    /// ```
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Self> {
        let st = st_format::parse(bytes, source)?;
        let metadata = st_format::read_metadata(bytes, source)?.unwrap_or_default();
        let bad = |m: String| Error::invalid_state(m);
        match metadata.get("format").map(String::as_str) {
            Some(FORMAT) => {}
            Some(other) => return Err(bad(format!("format is {other:?}, expected {FORMAT:?}"))),
            None => {
                return Err(bad(
                    "no \"format\" metadata: this is not a data-sparsifier state file".into(),
                ))
            }
        }
        let version = metadata
            .get("format_version")
            .ok_or_else(|| bad("no \"format_version\" metadata".into()))?;
        if version.parse::<u32>().ok() != Some(FORMAT_VERSION) {
            return Err(bad(format!(
                "format_version {version:?} is not supported (this library reads {FORMAT_VERSION})"
            )));
        }
        let json = metadata
            .get("state")
            .ok_or_else(|| bad("no \"state\" metadata".into()))?;
        let meta: StateMeta<C, S> = serde_json::from_str(json)
            .map_err(|e| Error::invalid_state_from("the \"state\" metadata is not valid", e))?;

        let mut seen = std::collections::HashSet::new();
        let mut entries = Vec::with_capacity(meta.entries.len());
        for m in meta.entries {
            validate_name(&m.name)?;
            if !seen.insert(m.name.clone()) {
                return Err(bad(format!("entry {:?} appears twice", m.name)));
            }
            let view = st
                .tensor(&data_key(&m.name))
                .map_err(|_| bad(format!("tensor {:?} is missing", data_key(&m.name))))?;
            let dtype = st_format::from_dtype(view.dtype(), &data_key(&m.name))
                .map_err(|e| Error::invalid_state_from("unsupported tensor dtype", e))?
                .require_float(&data_key(&m.name))?;
            if dtype != m.dtype || view.shape() != m.shape.as_slice() {
                return Err(bad(format!(
                    "tensor {:?} is {dtype} {:?}, but the metadata says {} {:?}",
                    data_key(&m.name),
                    view.shape(),
                    m.dtype,
                    m.shape
                )));
            }
            let data = Tensor::from_le_bytes(dtype, m.shape.clone(), view.data())?;
            let mview = st
                .tensor(&mask_key(&m.name))
                .map_err(|_| bad(format!("tensor {:?} is missing", mask_key(&m.name))))?;
            if st_format::from_dtype(mview.dtype(), "mask").ok() != Some(FileDType::U8)
                || mview.shape().len() != 1
            {
                return Err(bad(format!(
                    "tensor {:?} must be 1-D U8 packed bits",
                    mask_key(&m.name)
                )));
            }
            let mask = Mask::from_packed_bytes(m.shape.clone(), mview.data())
                .map_err(|e| bad(format!("mask of {:?}: {e}", m.name)))?;
            entries.push(EntryState {
                name: m.name,
                kind: m.kind,
                data,
                mask,
                config: m.config,
                state: m.state,
                parametrized: m.parametrized,
            });
        }
        let expected = entries.len() * 2;
        if st.len() != expected {
            let extra: Vec<String> = st
                .names()
                .into_iter()
                .filter(|n| {
                    !n.strip_prefix("data/")
                        .or_else(|| n.strip_prefix("mask/"))
                        .is_some_and(|x| seen.contains(x))
                })
                .take(5)
                .cloned()
                .collect();
            return Err(bad(format!(
                "the file holds tensors that no entry describes: {extra:?}"
            )));
        }
        Ok(StateDict {
            sparsifier: meta.sparsifier,
            mask_update_enabled: meta.mask_update_enabled,
            entries,
            extra: meta.extra,
        })
    }
}

/// The saved state of a `DataSparsifier<U>`.
///
/// ```
/// use data_sparsifier::{norm::DataNorm, DataNormConfig, DataNormSparsifier, SparsifierState};
/// let sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
/// let sd: SparsifierState<DataNorm> = sp.state_dict().unwrap();
/// assert_eq!(sd.sparsifier, "DataNormSparsifier");
/// assert!(sd.entries.is_empty() && sd.mask_update_enabled);
/// ```
pub type SparsifierState<U> = StateDict<<U as UpdateMask>::Config, <U as UpdateMask>::State>;

impl<U: UpdateMask> DataSparsifier<U> {
    /// A snapshot of every entry: data (copied), mask, config, implementer state, and whether it is
    /// still parametrized. Later changes to the sparsifier or its data do not show through it.
    ///
    /// ```
    /// use data_sparsifier::{LoadOptions, DataNormConfig, DataNormSparsifier, Tensor};
    /// let mut a = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// a.add_data("x", Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [2, 4]).unwrap())
    ///     .unwrap();
    /// a.step().unwrap();
    /// let sd = a.state_dict().unwrap();
    ///
    /// let mut b = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// b.load_state_dict(sd.clone(), LoadOptions::default()).unwrap();
    /// assert_eq!(b.state_dict().unwrap(), sd);
    /// assert_eq!(b.get_mask("x").unwrap().to_dense_u8(), vec![0, 0, 0, 0, 1, 1, 1, 1]);
    /// ```
    pub fn state_dict(&self) -> Result<SparsifierState<U>> {
        Ok(StateDict {
            sparsifier: self.updater().name().to_string(),
            mask_update_enabled: self.mask_update_enabled(),
            entries: self
                .entries()
                .iter()
                .map(|e| {
                    let data = e.data.snapshot()?;
                    check_mask_fits(&e.name, &e.mask, data.shape())?;
                    Ok(EntryState {
                        name: e.name.clone(),
                        kind: e.kind,
                        data,
                        mask: e.mask.clone(),
                        config: e.config.clone(),
                        state: e.state.clone(),
                        parametrized: e.parametrized,
                    })
                })
                .collect::<Result<_>>()?,
            extra: BTreeMap::new(),
        })
    }

    /// Loads a state. Everything is checked before anything changes, so a failed check leaves the
    /// sparsifier as it was: the sparsifier name, every entry's name (valid, not repeated), shape
    /// (2-D for embeddings, at most 2-D unless the implementer supports N-D), mask and config.
    ///
    /// * `strict = true`: afterwards the sparsifier holds exactly the state's entries, in its order
    ///   (PyTorch's strict: everything held before is dropped).
    /// * `strict = false`: entries of other names are kept; a same-name entry is replaced where it
    ///   stands (PyTorch raises `KeyError` on any overlap), and new names are added at the end.
    ///
    /// Where an entry of the same name, kind, shape and dtype is already held, the loaded data is
    /// written **into its shared handle**, so a model holding that parameter sees the restored values
    /// (PyTorch loads detached copies). Other entries get new handles. Writes into another
    /// framework's storage come first and are the only step that can still fail; if one does, the
    /// sparsifier is unchanged, but the external handles written before it hold the loaded values.
    ///
    /// Whether mask updates are enabled is restored too (PyTorch leaves `enable_mask_update` as it
    /// is), so a resumed run continues exactly.
    ///
    /// ```
    /// use data_sparsifier::{LoadOptions, DType, DataNormConfig, DataNormSparsifier, Tensor};
    /// let mut a = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// a.add_data("x", Tensor::zeros(DType::F32, [4])).unwrap();
    /// let sd = a.state_dict().unwrap();
    ///
    /// let mut b = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// b.add_data("y", Tensor::zeros(DType::F32, [4])).unwrap();
    /// b.load_state_dict(sd.clone(), LoadOptions { strict: false }).unwrap(); // non-strict: "y" is kept
    /// assert_eq!(b.names().collect::<Vec<_>>(), ["y", "x"]);
    /// b.load_state_dict(sd, LoadOptions::default()).unwrap(); // strict: exactly the state's entries
    /// assert_eq!(b.names().collect::<Vec<_>>(), ["x"]);
    /// ```
    pub fn load_state_dict(
        &mut self,
        state: SparsifierState<U>,
        options: LoadOptions,
    ) -> Result<()> {
        let LoadOptions { strict } = options;
        if state.sparsifier != self.updater().name() {
            return Err(Error::invalid_state(format!(
                "the state was saved by a {:?} sparsifier; this one is {:?}: load it into a \
                 sparsifier of the same kind",
                state.sparsifier,
                self.updater().name()
            )));
        }
        let mut seen = std::collections::HashSet::new();
        for e in &state.entries {
            validate_name(&e.name)?;
            if !seen.insert(e.name.as_str()) {
                return Err(Error::invalid_state(format!(
                    "entry {:?} appears twice",
                    e.name
                )));
            }
            let shape = e.data.shape();
            let embedding = matches!(e.kind, DataKind::Embedding | DataKind::EmbeddingBag);
            if embedding && shape.len() != 2 {
                return Err(Error::invalid_state(format!(
                    "entry {:?} is an {} but its table has shape {shape:?}; an embedding table is 2-D",
                    e.name, e.kind
                )));
            }
            if shape.len() > 2 && !self.updater().supports_nd() {
                return Err(Error::UnsupportedShape {
                    name: e.name.clone(),
                    shape: shape.to_vec(),
                });
            }
            e.mask.check_shape(&e.name, shape)?;
            self.updater().validate(&e.name, &e.config)?;
        }

        // Which held handle each loaded entry is written into, if any.
        let reuse: Vec<Option<usize>> = state
            .entries
            .iter()
            .map(|e| {
                self.entries().iter().position(|o| {
                    o.name == e.name
                        && o.kind == e.kind
                        && o.data.dtype() == e.data.dtype()
                        && o.data.shape() == e.data.shape()
                })
            })
            .collect();
        // The fallible writes (into other frameworks' storage) first, before anything changes here.
        for (e, r) in state.entries.iter().zip(&reuse) {
            if let Some(i) = *r {
                let h = &self.entries()[i].data;
                if matches!(h, Handle::External(_)) {
                    h.set(e.data.clone())
                        .map_err(|err| err.with_data(&e.name))?;
                }
            }
        }

        let old: Vec<Entry<U>> = std::mem::take(self.entries_mut());
        let mut loaded = Vec::with_capacity(state.entries.len());
        for (e, r) in state.entries.into_iter().zip(reuse) {
            let data = match r.map(|i| &old[i]) {
                Some(o) => {
                    let h = o.data.clone();
                    if let Handle::Native(p) = &h {
                        p.set(e.data);
                    }
                    h
                }
                None => Handle::Native(
                    Parameter::new(e.data).with_requires_grad(e.kind != DataKind::Tensor),
                ),
            };
            loaded.push(Entry {
                name: e.name,
                kind: e.kind,
                data,
                config: e.config,
                mask: e.mask,
                state: e.state,
                parametrized: e.parametrized,
            });
        }
        let entries = self.entries_mut();
        if strict {
            *entries = loaded;
        } else {
            // Same-name entries are replaced where they stand; new names go to the end.
            let mut loaded: Vec<Option<Entry<U>>> = loaded.into_iter().map(Some).collect();
            for held in old {
                let replacement = loaded
                    .iter_mut()
                    .find(|l| l.as_ref().is_some_and(|l| l.name == held.name))
                    .and_then(Option::take);
                entries.push(replacement.unwrap_or(held));
            }
            entries.extend(loaded.into_iter().flatten());
        }
        self.set_mask_update_enabled(state.mask_update_enabled);
        Ok(())
    }

    /// Saves the state to `path` atomically, streaming each entry's data from its handle (no copy of
    /// the data is made).
    ///
    /// Errors, writing nothing, if a config or per-name state does not survive the JSON round trip
    /// (NaN or infinite floats: JSON has no such numbers) or a mask no longer fits its data.
    ///
    /// ```
    /// use data_sparsifier::{LoadOptions, DataNormConfig, DataNormSparsifier, Tensor};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("state.safetensors");
    /// let mut a = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// a.add_data("x", Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [1, 4]).unwrap()).unwrap();
    /// a.step().unwrap();
    /// a.save_state(&path).unwrap();
    ///
    /// let mut b = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// b.load_state(&path, LoadOptions::default()).unwrap();
    /// assert_eq!(b.state_dict().unwrap(), a.state_dict().unwrap());
    /// ```
    pub fn save_state(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_state_with_extra(path, &BTreeMap::new())
    }

    /// [`save_state`](Self::save_state) with extra JSON state of other components (e.g. a scheduler).
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use data_sparsifier::{LoadOptions, DataNormConfig, DataNormSparsifier};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("state.safetensors");
    /// let sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// let extra = BTreeMap::from([("epoch".to_string(), serde_json::json!(7))]);
    /// sp.save_state_with_extra(&path, &extra).unwrap();
    ///
    /// let mut b = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// assert_eq!(b.load_state(&path, LoadOptions::default()).unwrap()["epoch"], 7);
    /// ```
    pub fn save_state_with_extra(
        &self,
        path: impl AsRef<Path>,
        extra: &BTreeMap<String, serde_json::Value>,
    ) -> Result<()> {
        for e in self.entries() {
            check_json_round_trip(&e.name, "config", &e.config)?;
            check_json_round_trip(&e.name, "state", &e.state)?;
        }
        let headers: Vec<EntryHeader<'_, U::Config, U::State>> = self
            .entries()
            .iter()
            .map(|e| EntryHeader {
                name: &e.name,
                kind: e.kind,
                dtype: e.data.dtype(),
                shape: e.data.shape(),
                parametrized: e.parametrized,
                config: &e.config,
                state: &e.state,
            })
            .collect();
        let header = StateHeader {
            sparsifier: self.updater().name(),
            mask_update_enabled: self.mask_update_enabled(),
            entries: &headers,
            extra,
        };
        let mut w = StateWriter::create(path, &header)?;
        for e in self.entries() {
            e.data
                .read(|v| w.write_entry(&e.name, v, &e.mask))
                .map_err(|err| err.with_data(&e.name))?;
        }
        w.finish()?.commit(CommitMode::Replace)
    }

    /// Loads a state file saved by [`save_state`](Self::save_state) and returns its `extra` part.
    /// See [`load_state_dict`](Self::load_state_dict) for what is checked and replaced.
    ///
    /// ```
    /// use data_sparsifier::{LoadOptions, DataNormConfig, DataNormSparsifier, Parameter, Tensor};
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("state.safetensors");
    /// let w = Parameter::new(Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [1, 4]).unwrap());
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// sp.add_data("w", &w).unwrap();
    /// sp.save_state(&path).unwrap();
    ///
    /// w.write().as_slice_mut::<f32>().unwrap()[0] = 100.0; // training goes on...
    /// let extra = sp.load_state(&path, LoadOptions::default()).unwrap(); // ...and is rolled back
    /// assert!(extra.is_empty());
    /// assert_eq!(w.read().to_f64_vec(), vec![1.0, 2.0, 3.0, 4.0]); // written into the caller's handle
    /// ```
    pub fn load_state(
        &mut self,
        path: impl AsRef<Path>,
        options: LoadOptions,
    ) -> Result<BTreeMap<String, serde_json::Value>> {
        let mut sd = SparsifierState::<U>::load(path)?;
        let extra = std::mem::take(&mut sd.extra);
        self.load_state_dict(sd, options)?;
        Ok(extra)
    }
}
