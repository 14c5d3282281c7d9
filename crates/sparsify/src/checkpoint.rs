//! Opening the input: a memory-mapped, validated safetensors file as the library's
//! [`TensorSource`], with the CLI's one-line errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use data_sparsifier::format::safetensors::SafetensorsSource;
pub use data_sparsifier::format::TensorInfo as TensorEntry;
use data_sparsifier::format::{TensorData, TensorSource};

use crate::error::{CliError, Result};

/// A memory-mapped, validated safetensors file: tensors in file (data offset) order.
pub struct Checkpoint {
    path: PathBuf,
    source: SafetensorsSource,
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
                return Err(CliError::Usage(format!(
                    "{shown} is not a valid safetensors file: it is a directory"
                )))
            }
            // Mapping a FIFO would block forever; a device or socket cannot be mapped sensibly.
            Ok(m) if !m.is_file() => {
                return Err(CliError::Usage(format!(
                    "{shown} is not a regular file (a FIFO, socket or device?): give the path of a safetensors file"
                )))
            }
            Ok(_) => {}
        }
        // SAFETY: the CLI's contract with its user (README, `sparsify run --help`) is that the
        // input is not written in place while a command reads it. Files are replaced by rename
        // by every tool that writes safetensors (this one included), which leaves the mapped
        // inode intact; reading the whole file instead would defeat inputs larger than RAM.
        let source = unsafe { SafetensorsSource::open(path) }.map_err(|e| match e {
            data_sparsifier::Error::Io { source, .. } => CliError::io(path, source),
            data_sparsifier::Error::Safetensors { source, .. } => CliError::BadInput {
                path: shown.clone(),
                source,
            },
            other => CliError::lib(format!("opening {shown}"), other),
        })?;
        Ok(Checkpoint {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The tensors in file order.
    pub fn tensors(&self) -> &[TensorEntry] {
        self.source.tensors()
    }
    /// The `__metadata__`, if any.
    pub fn metadata(&self) -> Option<&BTreeMap<String, String>> {
        self.source.metadata()
    }
    /// The whole file's size.
    pub fn file_len(&self) -> usize {
        self.source.total_bytes() as usize
    }
    /// The raw bytes of tensor `index`.
    pub fn bytes(&self, index: usize) -> &[u8] {
        self.source.bytes(index)
    }
    /// Tensor `index` as typed data (zero-copy unless unaligned).
    pub fn data(&self, index: usize) -> Result<TensorData<'_>> {
        let name = &self.tensors()[index].name;
        self.source
            .data(index)
            .map_err(|e| CliError::lib(format!("reading tensor {name:?}"), e))
    }
    /// The library's source.
    pub fn source(&self) -> &SafetensorsSource {
        &self.source
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
