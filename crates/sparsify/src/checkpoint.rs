//! Reading a safetensors checkpoint: memory-mapped, validated, tensors in file (data offset) order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use data_sparsifier::safetensors_file::MappedFile;
use data_sparsifier::{DType, Slice, Tensor, TensorView};
use safetensors::{Dtype, SafeTensorError};

use crate::error::{CliError, Result};

/// One tensor of a checkpoint: its header entry and where its bytes are in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// The tensor's name.
    pub name: String,
    /// Its safetensors dtype.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Byte range of its data within the file.
    pub range: std::ops::Range<usize>,
}

impl TensorEntry {
    /// The floating-point dtype, if the tensor is one this project sparsifies.
    pub fn float_dtype(&self) -> Option<DType> {
        DType::from_safetensors(self.dtype, &self.name).ok()
    }
    /// Size of the data in bytes.
    pub fn byte_len(&self) -> usize {
        self.range.len()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A memory-mapped, validated safetensors file.
pub struct Checkpoint {
    path: PathBuf,
    map: MappedFile,
    tensors: Vec<TensorEntry>,
    metadata: Option<BTreeMap<String, String>>,
}

/// A human phrase for a safetensors parse error.
fn describe(e: &SafeTensorError) -> String {
    match e {
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
        SafeTensorError::InvalidOffset(name) => {
            format!("the data offsets of tensor {name:?} are invalid (overlapping or out of order)")
        }
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's shape and dtype do not match its data size".into()
        }
        SafeTensorError::ValidationOverflow => {
            "a tensor's shape overflows (corrupted header)".into()
        }
        other => format!("{other}"),
    }
}

impl Checkpoint {
    /// Maps and validates `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CliError::MissingInput { path: shown })
            }
            Err(e) => return Err(CliError::io(path, e)),
            Ok(m) if m.is_dir() => {
                return Err(CliError::BadInput {
                    path: shown,
                    reason: "it is a directory".into(),
                })
            }
            // Mapping a FIFO would block forever; a device or socket cannot be mapped sensibly.
            Ok(m) if !m.is_file() => {
                return Err(CliError::Usage(format!(
                    "{shown} is not a regular file (a FIFO, socket or device?): give the path of a safetensors file"
                )))
            }
            Ok(_) => {}
        }
        let map = MappedFile::open(path).map_err(|e| match e {
            data_sparsifier::Error::Io { source, .. } => CliError::io(path, source),
            other => CliError::lib(format!("opening {shown}"), other),
        })?;
        let (tensors, metadata) =
            Self::parse(map.bytes()).map_err(|reason| CliError::BadInput {
                path: shown.clone(),
                reason,
            })?;
        Ok(Checkpoint {
            path: path.to_path_buf(),
            map,
            tensors,
            metadata,
        })
    }

    /// Parses and validates the header of safetensors `bytes`: the tensors sorted by data offset
    /// (the order they are stored in), and the `__metadata__`. Never panics.
    #[allow(clippy::type_complexity)]
    pub fn parse(
        bytes: &[u8],
    ) -> std::result::Result<(Vec<TensorEntry>, Option<BTreeMap<String, String>>), String> {
        data_sparsifier::safetensors_file::check_offsets(bytes)?;
        let (header_len, meta) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| describe(&e))?;
        let base = 8 + header_len;
        let mut tensors: Vec<TensorEntry> = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| TensorEntry {
                name,
                dtype: info.dtype,
                shape: info.shape.clone(),
                range: base + info.data_offsets.0..base + info.data_offsets.1,
            })
            .collect();
        tensors.sort_by(|a, b| {
            (a.range.start, a.range.end, &a.name).cmp(&(b.range.start, b.range.end, &b.name))
        });
        // read_metadata checked offsets, sizes and the file length; re-check cheaply so that a
        // future parser change cannot turn into an out-of-bounds slice here.
        if tensors
            .iter()
            .any(|t| t.range.end > bytes.len() || t.range.start > t.range.end)
        {
            return Err("a tensor's data lies outside the file".into());
        }
        let metadata = meta
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
        Ok((tensors, metadata))
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The tensors in file order.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }
    /// The `__metadata__`, if any.
    pub fn metadata(&self) -> Option<&BTreeMap<String, String>> {
        self.metadata.as_ref()
    }
    /// The whole file's size.
    pub fn file_len(&self) -> usize {
        self.map.bytes().len()
    }
    /// The raw bytes of a tensor.
    pub fn bytes(&self, t: &TensorEntry) -> &[u8] {
        self.map.bytes().get(t.range.clone()).unwrap_or(&[])
    }
}

/// The typed data of one tensor: a zero-copy view into the map when its bytes are aligned for the
/// dtype, else an owned copy of that one tensor.
pub enum TypedData<'a> {
    /// Borrowed from the map.
    Mapped(Slice<'a>),
    /// Copied (the bytes were not aligned).
    Copied(Tensor),
}

impl<'a> TypedData<'a> {
    /// Typed data of `bytes` (little endian) as `dtype`.
    pub fn new(dtype: DType, bytes: &'a [u8]) -> Result<Self> {
        match Slice::try_from_bytes(dtype, bytes) {
            Some(s) => Ok(TypedData::Mapped(s)),
            None => {
                let n = bytes.len() / dtype.size_in_bytes();
                Tensor::from_le_bytes(dtype, [n], bytes)
                    .map(TypedData::Copied)
                    .map_err(|e| CliError::lib("copying unaligned tensor data", e))
            }
        }
    }
    /// Whether the data had to be copied.
    pub fn is_copy(&self) -> bool {
        matches!(self, TypedData::Copied(_))
    }
    /// The typed slice.
    pub fn slice(&self) -> Slice<'_> {
        match self {
            TypedData::Mapped(s) => *s,
            TypedData::Copied(t) => t.storage().as_slice(),
        }
    }
    /// A view with `shape` (which must hold the same element count).
    pub fn view<'s>(&'s self, shape: &'s [usize]) -> Result<TensorView<'s>> {
        TensorView::from_slice(self.slice(), shape)
            .map_err(|e| CliError::lib("viewing tensor data", e))
    }
}

/// The shape a tensor is sparsified as: 0-D `[]`, 1-D `[n]` and 2-D shapes stay as they are (the
/// library treats 0-D as one 1x1 row and 1-D as one row), and N-D `[a, b, ..., z]` is flattened
/// to `[a*b*..., z]` (rows of the last dim).
pub fn sparsify_shape(shape: &[usize]) -> Vec<usize> {
    match shape {
        [] | [_] | [_, _] => shape.to_vec(),
        [lead @ .., last] => vec![lead.iter().product(), *last],
    }
}
