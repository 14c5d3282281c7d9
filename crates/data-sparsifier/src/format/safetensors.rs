//! The safetensors format: a memory-mapped [`SafetensorsSource`], the streaming, order-preserving,
//! atomic [`SafetensorsWriter`], and the sinks over it ([`SquashedSink`], [`MaskSink`]).
//!
//! The `safetensors` crate's own serializer sorts tensors by dtype and name and needs every tensor in
//! memory at once; [`SafetensorsWriter`] instead writes the header first (sizes are known up front),
//! then each tensor's bytes in the order given, in as many pieces as the caller likes, into an
//! [`AtomicFile`]. The result is a standard safetensors file that PyTorch, candle and the
//! `safetensors` crate load. The `safetensors` crate's types stay inside this module.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::ops::Range;
use std::path::Path;

use safetensors::{Dtype, SafeTensorError};
use serde::Serialize;

use super::{FileDType, TensorInfo, TensorSink, TensorSource};
use crate::error::{Error, Result};
use crate::io::{AtomicFile, MappedFile, Staged};
use crate::mask::Mask;
use crate::tensor::{Tensor, TensorView};

/// The `safetensors` parser's limit on the header size (it refuses larger headers).
pub const MAX_HEADER_SIZE: usize = 100_000_000;

/// Bounds every tensor's data offsets by the file size before the `safetensors` parser sees them.
///
/// The parser (0.4.5, and 0.8.0 alike) adds header offsets without overflow checks in its final size
/// check, so a header claiming an offset near `usize::MAX` panics in debug builds and wraps in
/// release. Everything else (short files, bad lengths, a header over [`MAX_HEADER_SIZE`], bad
/// JSON) is left to the parser to report; in particular a header over the limit is not parsed here.
///
/// ```
/// use data_sparsifier::format::safetensors::check_offsets;
/// let header = br#"{"t":{"dtype":"F32","shape":[4611686018427387903],"data_offsets":[0,18446744073709551612]}}"#;
/// let mut file = (header.len() as u64).to_le_bytes().to_vec();
/// file.extend_from_slice(header);
/// assert!(check_offsets(&file).is_err());
/// ```
pub fn check_offsets(bytes: &[u8]) -> std::result::Result<(), FormatError> {
    let Some(len_bytes) = bytes.get(..8) else {
        return Ok(());
    };
    let mut arr = [0u8; 8];
    arr.copy_from_slice(len_bytes);
    let Some(header) = usize::try_from(u64::from_le_bytes(arr))
        .ok()
        .filter(|&n| n <= MAX_HEADER_SIZE)
        .and_then(|n| n.checked_add(8))
        .and_then(|end| bytes.get(8..end))
    else {
        return Ok(());
    };
    let data_len = (bytes.len() - 8 - header.len()) as u64;
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(header)
    else {
        return Ok(());
    };
    for (name, info) in map.iter().filter(|(n, _)| *n != "__metadata__") {
        let offsets = info.get("data_offsets").and_then(|o| o.as_array());
        if offsets.is_some_and(|o| o.iter().any(|o| o.as_u64().is_some_and(|o| o > data_len))) {
            return Err(FormatError::new(format!(
                "the data of tensor {name:?} would end past the end of the file (truncated?)"
            )));
        }
    }
    Ok(())
}

fn checked(bytes: &[u8], source: &str) -> Result<()> {
    check_offsets(bytes).map_err(|e| e.reading(source))
}

/// Parses safetensors bytes (crate-internal: the parser's types stay in this module's users).
pub(crate) fn parse<'a>(bytes: &'a [u8], source: &str) -> Result<safetensors::SafeTensors<'a>> {
    checked(bytes, source)?;
    safetensors::SafeTensors::deserialize(bytes).map_err(|e| FormatError::from(e).reading(source))
}

/// Reads only the `__metadata__` of safetensors bytes.
pub(crate) fn read_metadata(
    bytes: &[u8],
    source: &str,
) -> Result<Option<BTreeMap<String, String>>> {
    checked(bytes, source)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| FormatError::from(e).reading(source))?;
    Ok(meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
}

/// Why bytes are not a valid safetensors file, in words a user can act on; its
/// [`source`](std::error::Error::source) is the parser's own error, where there is one.
#[derive(Debug)]
pub struct FormatError {
    message: String,
    parser: Option<SafeTensorError>,
}

impl FormatError {
    fn new(message: String) -> Self {
        FormatError {
            message,
            parser: None,
        }
    }
    /// This error while reading `source` (a path or a description).
    fn reading(self, source: &str) -> Error {
        Error::Safetensors {
            source_name: Some(source.to_string()),
            source: self,
        }
    }
}

impl From<SafeTensorError> for FormatError {
    fn from(e: SafeTensorError) -> Self {
        let message = match &e {
            SafeTensorError::HeaderTooSmall => {
                "it is shorter than the 8-byte header length (empty or truncated file?)".into()
            }
            SafeTensorError::HeaderTooLarge => {
                "its header length is over the 100 MB limit (not a safetensors file, or corrupted)"
                    .into()
            }
            SafeTensorError::InvalidHeaderLength => {
                "its header length points past the end of the file (truncated or not safetensors)"
                    .into()
            }
            SafeTensorError::InvalidHeader => "its header is not UTF-8 text (corrupted?)".into(),
            SafeTensorError::InvalidHeaderStart | SafeTensorError::InvalidHeaderDeserialization => {
                "its header is not valid safetensors JSON (corrupted or another format?)".into()
            }
            SafeTensorError::MetadataIncompleteBuffer => {
                "the tensor data does not match the file size (truncated or padded file?)".into()
            }
            SafeTensorError::InvalidOffset(name) => format!(
                "the data offsets of tensor {name:?} are invalid (overlapping or out of order)"
            ),
            SafeTensorError::TensorInvalidInfo => {
                "a tensor's shape and dtype do not match its data size".into()
            }
            SafeTensorError::ValidationOverflow => {
                "a tensor's shape overflows (corrupted header)".into()
            }
            other => format!("{other}"),
        };
        FormatError {
            message,
            parser: Some(e),
        }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FormatError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.parser
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

pub(crate) fn to_dtype(d: FileDType) -> Dtype {
    match d {
        FileDType::Bool => Dtype::BOOL,
        FileDType::U8 => Dtype::U8,
        FileDType::I8 => Dtype::I8,
        FileDType::F8E5M2 => Dtype::F8_E5M2,
        FileDType::F8E4M3 => Dtype::F8_E4M3,
        FileDType::I16 => Dtype::I16,
        FileDType::U16 => Dtype::U16,
        FileDType::F16 => Dtype::F16,
        FileDType::BF16 => Dtype::BF16,
        FileDType::I32 => Dtype::I32,
        FileDType::U32 => Dtype::U32,
        FileDType::F32 => Dtype::F32,
        FileDType::F64 => Dtype::F64,
        FileDType::I64 => Dtype::I64,
        FileDType::U64 => Dtype::U64,
    }
}

/// The stored dtype of a parsed tensor; one this crate does not know is a format error.
pub(crate) fn from_dtype(d: Dtype, name: &str) -> std::result::Result<FileDType, FormatError> {
    Ok(match d {
        Dtype::BOOL => FileDType::Bool,
        Dtype::U8 => FileDType::U8,
        Dtype::I8 => FileDType::I8,
        Dtype::F8_E5M2 => FileDType::F8E5M2,
        Dtype::F8_E4M3 => FileDType::F8E4M3,
        Dtype::I16 => FileDType::I16,
        Dtype::U16 => FileDType::U16,
        Dtype::F16 => FileDType::F16,
        Dtype::BF16 => FileDType::BF16,
        Dtype::I32 => FileDType::I32,
        Dtype::U32 => FileDType::U32,
        Dtype::F32 => FileDType::F32,
        Dtype::F64 => FileDType::F64,
        Dtype::I64 => FileDType::I64,
        Dtype::U64 => FileDType::U64,
        other => {
            return Err(FormatError::new(format!(
                "tensor {name:?} has dtype {other:?}, which this tool does not know"
            )))
        }
    })
}

/// The bytes a source holds: a map of the file, or bytes in memory.
enum Backing {
    Mapped(MappedFile),
    Owned(Vec<u8>),
}

/// A safetensors file as a [`TensorSource`]: the header parsed and validated, tensors in data
/// offset order (the order they are stored in), data borrowed from the map or the buffer.
///
/// ```
/// use data_sparsifier::format::safetensors::{SafetensorsSource, SafetensorsWriter};
/// use data_sparsifier::format::{FileDType, TensorInfo, TensorSource};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("t.safetensors");
/// let mut w = SafetensorsWriter::create(&path, &[TensorInfo::new("ids", FileDType::I64, [1])], None).unwrap();
/// w.write(&7i64.to_le_bytes()).unwrap();
/// w.finish().unwrap();
/// let src = SafetensorsSource::read(&path).unwrap();
/// assert_eq!(src.tensors()[0], TensorInfo::new("ids", FileDType::I64, [1]));
/// assert_eq!(src.bytes(0), &7i64.to_le_bytes());
/// ```
pub struct SafetensorsSource {
    backing: Backing,
    tensors: Vec<TensorInfo>,
    ranges: Vec<Range<usize>>,
    metadata: Option<BTreeMap<String, String>>,
}

impl SafetensorsSource {
    /// Maps and parses `path`: nothing but the header is read until tensors are used, so files
    /// larger than RAM work.
    ///
    /// # Safety
    ///
    /// As [`MappedFile::open`]: the file must not be truncated or modified while the source is
    /// alive.
    pub unsafe fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        // SAFETY: forwarded to the caller (this function's contract).
        let map = unsafe { MappedFile::open(path) }?;
        Self::from_backing(Backing::Mapped(map), &path.display().to_string())
    }
    /// Reads `path` into memory and parses it: safe whatever else writes the file.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_backing(Backing::Owned(bytes), &path.display().to_string())
    }
    /// Parses bytes in memory; `what` names them in errors.
    pub fn from_bytes(bytes: Vec<u8>, what: &str) -> Result<Self> {
        Self::from_backing(Backing::Owned(bytes), what)
    }
    fn from_backing(backing: Backing, what: &str) -> Result<Self> {
        let bytes = match &backing {
            Backing::Mapped(m) => m.bytes(),
            Backing::Owned(v) => v.as_slice(),
        };
        let (tensors, ranges, metadata) = parse_header(bytes).map_err(|e| e.reading(what))?;
        Ok(SafetensorsSource {
            backing,
            tensors,
            ranges,
            metadata,
        })
    }
    fn all_bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Mapped(m) => m.bytes(),
            Backing::Owned(v) => v,
        }
    }
    /// The byte range of tensor `index` within the file.
    pub fn range(&self, index: usize) -> Range<usize> {
        self.ranges[index].clone()
    }
}

type Header = (
    Vec<TensorInfo>,
    Vec<Range<usize>>,
    Option<BTreeMap<String, String>>,
);

/// The header of safetensors `bytes`, tensors sorted by data offset. Never panics.
fn parse_header(bytes: &[u8]) -> std::result::Result<Header, FormatError> {
    check_offsets(bytes)?;
    let (header_len, meta) = safetensors::SafeTensors::read_metadata(bytes)?;
    let base = 8 + header_len;
    let mut list: Vec<(TensorInfo, Range<usize>)> = Vec::new();
    for (name, info) in meta.tensors() {
        let dtype = from_dtype(info.dtype, &name)?;
        let range = base + info.data_offsets.0..base + info.data_offsets.1;
        list.push((TensorInfo::new(name, dtype, info.shape.clone()), range));
    }
    list.sort_by(|(a, ra), (b, rb)| (ra.start, ra.end, &a.name).cmp(&(rb.start, rb.end, &b.name)));
    // read_metadata checked offsets, sizes and the file length; re-check cheaply so that a
    // parser change cannot turn into an out-of-bounds slice.
    if list
        .iter()
        .any(|(_, r)| r.end > bytes.len() || r.start > r.end)
    {
        return Err(FormatError::new(
            "a tensor's data lies outside the file".into(),
        ));
    }
    let metadata = meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    let (tensors, ranges) = list.into_iter().unzip();
    Ok((tensors, ranges, metadata))
}

impl TensorSource for SafetensorsSource {
    fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    fn metadata(&self) -> Option<&BTreeMap<String, String>> {
        self.metadata.as_ref()
    }
    fn bytes(&self, index: usize) -> &[u8] {
        self.all_bytes()
            .get(self.ranges[index].clone())
            .unwrap_or(&[])
    }
    fn total_bytes(&self) -> u64 {
        self.all_bytes().len() as u64
    }
}

#[derive(Serialize)]
struct HeaderInfo<'a> {
    dtype: Dtype,
    shape: &'a [usize],
    data_offsets: (usize, usize),
}

/// Writes a safetensors file tensor by tensor, in the order given, atomically.
///
/// ```
/// use data_sparsifier::format::safetensors::SafetensorsWriter;
/// use data_sparsifier::format::{FileDType, TensorInfo};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("t.safetensors");
/// let headers = vec![
///     TensorInfo::new("b", FileDType::F32, [2]),
///     TensorInfo::new("a", FileDType::U8, [3]),
/// ];
/// let mut w = SafetensorsWriter::create(&path, &headers, None).unwrap();
/// w.write(&1.0f32.to_le_bytes()).unwrap(); // a tensor may be written in pieces
/// w.write(&2.0f32.to_le_bytes()).unwrap();
/// w.write(&[1, 0, 1]).unwrap();
/// w.finish().unwrap();
/// let bytes = std::fs::read(&path).unwrap();
/// let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
/// assert_eq!(st.tensor("a").unwrap().data(), &[1, 0, 1]);
/// ```
pub struct SafetensorsWriter {
    file: AtomicFile,
    remaining: u64,
    path: String,
}

impl SafetensorsWriter {
    /// Writes the header for `tensors` (data laid out in this order) and `metadata`.
    pub fn create(
        path: impl AsRef<Path>,
        tensors: &[TensorInfo],
        metadata: Option<&BTreeMap<String, String>>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let header = Self::header_bytes(tensors, metadata)?;
        let mut file = AtomicFile::create(path)?;
        file.write_all(&(header.len() as u64).to_le_bytes())
            .and_then(|_| file.write_all(&header))
            .map_err(|e| Error::io(path, e))?;
        Ok(SafetensorsWriter {
            file,
            remaining: tensors.iter().map(|t| t.byte_len() as u64).sum(),
            path: path.display().to_string(),
        })
    }

    /// The JSON header, padded with spaces to a multiple of 8 bytes.
    pub fn header_bytes(
        tensors: &[TensorInfo],
        metadata: Option<&BTreeMap<String, String>>,
    ) -> Result<Vec<u8>> {
        // serde_json's map keeps insertion order only with a Vec of pairs; build the object by hand.
        let mut out = String::from("{");
        let mut first = true;
        if let Some(meta) = metadata {
            out.push_str("\"__metadata__\":");
            out.push_str(
                &serde_json::to_string(meta).map_err(|e| {
                    Error::invalid_state_from("cannot encode the metadata as JSON", e)
                })?,
            );
            first = false;
        }
        let mut offset = 0usize;
        let mut seen = std::collections::HashSet::new();
        for t in tensors {
            if !seen.insert(t.name.as_str()) || t.name == "__metadata__" {
                return Err(Error::InvalidName {
                    name: t.name.clone(),
                    reason: "tensor names in one file must be unique and not \"__metadata__\"",
                });
            }
            let len = t.byte_len();
            let info = HeaderInfo {
                dtype: to_dtype(t.dtype),
                shape: &t.shape,
                data_offsets: (offset, offset + len),
            };
            offset += len;
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&serde_json::to_string(&t.name).map_err(|e| {
                Error::invalid_state_from("cannot encode a tensor name as JSON", e)
            })?);
            out.push(':');
            out.push_str(&serde_json::to_string(&info).map_err(|e| {
                Error::invalid_state_from("cannot encode a tensor header as JSON", e)
            })?);
        }
        out.push('}');
        let mut bytes = out.into_bytes();
        while bytes.len() % 8 != 0 {
            bytes.push(b' ');
        }
        Ok(bytes)
    }

    /// Appends data bytes (the next tensor's, or the rest of the current one's).
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 > self.remaining {
            return Err(Error::invalid_state(format!(
                "writing {}: more data than the header declares",
                self.path
            )));
        }
        self.remaining -= bytes.len() as u64;
        self.file
            .write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// Checks that every declared byte was written, then commits the file.
    pub fn finish(self) -> Result<()> {
        self.finish_uncommitted()?.commit()
    }

    /// Checks that every declared byte was written and fsyncs the file, but leaves it uncommitted:
    /// the caller commits it ([`AtomicFile::commit`] or [`AtomicFile::commit_new`]), or drops it to
    /// discard it. For writing several files that should appear together.
    pub fn finish_uncommitted(mut self) -> Result<AtomicFile> {
        if self.remaining != 0 {
            return Err(Error::invalid_state(format!(
                "writing {}: {} bytes of tensor data missing",
                self.path, self.remaining
            )));
        }
        self.file.sync()?;
        Ok(self.file)
    }
}

/// The names a sink declared, in order, and which comes next.
struct Declared {
    /// The tensors as stored, in order.
    stored: Vec<TensorInfo>,
    next: usize,
}

impl Declared {
    fn new(stored: &[TensorInfo]) -> Self {
        Declared {
            stored: stored.to_vec(),
            next: 0,
        }
    }
    /// Whether `name` is the next declared tensor.
    fn is_next(&self, name: &str) -> bool {
        self.stored.get(self.next).is_some_and(|t| t.name == name)
    }
    /// Advances past `name`, which must be the next declared tensor.
    fn take(&mut self, name: &str, path: &str) -> Result<()> {
        if !self.is_next(name) {
            return Err(Error::invalid_state(format!(
                "writing {path}: tensor {name:?} is not the next one declared ({:?})",
                self.stored.get(self.next).map(|t| &t.name)
            )));
        }
        self.next += 1;
        Ok(())
    }
}

/// Elements squashed and written per piece (a multiple of 64, as `Mask::apply_into_at` needs).
const SQUASH_CHUNK: usize = 1 << 20;

/// The `sparsify run` output: a safetensors file of every tensor, sparsified ones as
/// `mask · data`, streamed through one 4 MiB buffer (no tensor-sized allocation).
///
/// ```
/// use data_sparsifier::format::safetensors::{SafetensorsSource, SquashedSink};
/// use data_sparsifier::format::{CommitMode, FileDType, TensorInfo, TensorSink, TensorSource};
/// use data_sparsifier::{Mask, Tensor};
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("out.safetensors");
/// let infos = [TensorInfo::new("w", FileDType::F32, [2, 2]), TensorInfo::new("ids", FileDType::U8, [2])];
/// let mut sink: Box<dyn TensorSink> = Box::new(SquashedSink::create(&path, &infos, None).unwrap());
/// let w = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]).unwrap();
/// sink.write_masked("w", w.view(), &Mask::from_dense_u8([2, 2], &[1, 0, 0, 1]).unwrap()).unwrap();
/// sink.write_raw("ids", &[7, 8]).unwrap();
/// sink.finish().unwrap().commit(CommitMode::NoClobber).unwrap();
/// let out = SafetensorsSource::read(&path).unwrap();
/// assert_eq!(out.data(0).unwrap().view(&[4]).unwrap().to_tensor().to_f64_vec(), vec![1.0, 0.0, 0.0, 4.0]);
/// ```
pub struct SquashedSink {
    w: SafetensorsWriter,
    declared: Declared,
    buf: Option<Tensor>,
}

impl SquashedSink {
    /// A sink writing `tensors` (all of them, in this order) and `metadata` to `path`.
    pub fn create(
        path: impl AsRef<Path>,
        tensors: &[TensorInfo],
        metadata: Option<&BTreeMap<String, String>>,
    ) -> Result<Self> {
        Ok(SquashedSink {
            w: SafetensorsWriter::create(path, tensors, metadata)?,
            declared: Declared::new(tensors),
            buf: None,
        })
    }
}

impl TensorSink for SquashedSink {
    fn write_raw(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.declared.take(name, &self.w.path)?;
        self.w.write(bytes)
    }
    fn write_masked(&mut self, name: &str, data: TensorView<'_>, mask: &Mask) -> Result<()> {
        self.declared.take(name, &self.w.path)?;
        let dtype = data.dtype();
        let n = data.numel();
        let buf = match self.buf.take() {
            Some(b) if b.dtype() == dtype && b.numel() >= SQUASH_CHUNK.min(n) => b,
            _ => Tensor::zeros(dtype, [SQUASH_CHUNK.min(n)]),
        };
        let mut buf = buf;
        let w = &mut self.w;
        crate::with_dtype!(dtype, T => {
            let (Some(src), Some(dst)) = (data.as_slice::<T>(), buf.as_slice_mut::<T>()) else {
                return Err(Error::DTypeMismatch { what: format!("squashing {name:?}"), expected: dtype, actual: buf.dtype() });
            };
            for start in (0..n).step_by(SQUASH_CHUNK) {
                let len = (n - start).min(SQUASH_CHUNK);
                mask.apply_into_at(start, &src[start..start + len], &mut dst[..len])
                    .map_err(|e| e.with_data(name))?;
                w.write(bytemuck::cast_slice(&dst[..len]))?;
            }
        });
        self.buf = Some(buf);
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<Staged> {
        Ok(Staged::one(self.w.finish_uncommitted()?))
    }
    fn stored_tensors(&self) -> Option<Vec<TensorInfo>> {
        Some(self.declared.stored.clone())
    }
}

/// Each sparsified tensor's mask as a dense `U8` tensor (1 keep, 0 zero) of the tensor's name
/// and shape; tensors copied unchanged are not stored.
pub struct MaskSink {
    w: SafetensorsWriter,
    declared: Declared,
}

impl MaskSink {
    /// A sink writing the masks of `tensors` (the sparsified ones, in order; their dtype is
    /// ignored, the masks are `U8`) and `metadata` to `path`.
    pub fn create(
        path: impl AsRef<Path>,
        tensors: &[TensorInfo],
        metadata: Option<&BTreeMap<String, String>>,
    ) -> Result<Self> {
        let headers: Vec<TensorInfo> = tensors
            .iter()
            .map(|t| TensorInfo::new(t.name.clone(), FileDType::U8, t.shape.clone()))
            .collect();
        Ok(MaskSink {
            declared: Declared::new(&headers),
            w: SafetensorsWriter::create(path, &headers, metadata)?,
        })
    }
}

impl TensorSink for MaskSink {
    fn write_raw(&mut self, name: &str, _bytes: &[u8]) -> Result<()> {
        if self.declared.is_next(name) {
            return Err(Error::invalid_state(format!(
                "writing {}: the mask of {name:?} is declared, but it was not sparsified",
                self.w.path
            )));
        }
        Ok(())
    }
    fn write_masked(&mut self, name: &str, _data: TensorView<'_>, mask: &Mask) -> Result<()> {
        self.declared.take(name, &self.w.path)?;
        // 1 MiB of dense bytes at a time.
        const CHUNK: usize = 1 << 20;
        let n = mask.len();
        let mut buf = vec![0u8; CHUNK.min(n)];
        for start in (0..n).step_by(CHUNK) {
            let m = (n - start).min(CHUNK);
            mask.dense_u8_into_at(start, &mut buf[..m])?;
            self.w.write(&buf[..m])?;
        }
        Ok(())
    }
    fn finish(self: Box<Self>) -> Result<Staged> {
        Ok(Staged::one(self.w.finish_uncommitted()?))
    }
    fn stored_tensors(&self) -> Option<Vec<TensorInfo>> {
        Some(self.declared.stored.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_over_the_limit_is_not_parsed_here() {
        // A header of MAX_HEADER_SIZE + 1 bytes whose offsets run past the file: were it parsed,
        // check_offsets would report them; the parser's size limit must answer instead.
        let json = br#"{"t":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#;
        let n = MAX_HEADER_SIZE + 1;
        let mut file = (n as u64).to_le_bytes().to_vec();
        file.extend_from_slice(json);
        file.resize(8 + n, b' ');
        assert!(check_offsets(&file).is_ok());
        assert!(matches!(
            safetensors::SafeTensors::read_metadata(&file),
            Err(safetensors::SafeTensorError::HeaderTooLarge)
        ));
        // Within the limit the same header is checked.
        let mut file = (json.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(json);
        assert!(check_offsets(&file).is_err());
    }
}
