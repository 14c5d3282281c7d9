//! Opening the input: a memory-mapped, validated safetensors file as the library's
//! [`TensorSource`], or a sharded checkpoint of them ([`Input`]), with the CLI's one-line errors.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use data_sparsifier::format::safetensors::SafetensorsSource;
use data_sparsifier::format::sharded::{is_index_path, ShardIndex, INDEX_SUFFIX};
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

/// What `run` and `inspect` read: one safetensors file, or a sharded checkpoint (an index and
/// the shards beside it), every shard memory-mapped and checked against the index. Tensors are
/// numbered across shards: shard by shard in the index's shard order, each in its file order.
pub struct Input {
    path: PathBuf,
    index: Option<(PathBuf, ShardIndex)>,
    shards: Vec<Shard>,
    tensors: Vec<TensorEntry>,
}

/// One file of an [`Input`].
pub struct Shard {
    /// Its file name (sharded), or its path as given (a single file).
    pub file: String,
    /// The mapped file.
    pub ck: Checkpoint,
    /// The number, across the input, of its first tensor.
    pub first: usize,
}

impl Shard {
    /// The numbers, across the input, of its tensors.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.first..self.first + self.ck.tensors().len()
    }
}

/// The index of a folder: its one `*.safetensors.index.json`.
fn index_in(dir: &Path) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| CliError::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(INDEX_SUFFIX))
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(CliError::Usage(format!(
            "{} is a folder without a *{INDEX_SUFFIX}: give a safetensors file, or the folder or index of a sharded checkpoint",
            dir.display()
        ))),
        _ => Err(CliError::Usage(format!(
            "{} holds {} indexes ({}): give the index file to read",
            dir.display(),
            found.len(),
            found
                .iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

impl Input {
    /// Opens `path`: a folder holding one `*.safetensors.index.json`, an index file
    /// (`*.index.json`), or a safetensors file.
    pub fn open(path: impl AsRef<Path>) -> Result<Input> {
        let path = path.as_ref();
        let index_path = if path.is_dir() {
            Some(index_in(path)?)
        } else if is_index_path(path) {
            Some(path.to_path_buf())
        } else {
            None
        };
        let Some(index_path) = index_path else {
            let ck = Checkpoint::open(path)?;
            return Ok(Input {
                path: path.to_path_buf(),
                index: None,
                tensors: ck.tensors().to_vec(),
                shards: vec![Shard {
                    file: path.display().to_string(),
                    ck,
                    first: 0,
                }],
            });
        };
        let index = match ShardIndex::read(&index_path) {
            Err(data_sparsifier::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Err(CliError::MissingInput {
                    path: index_path.display().to_string(),
                })
            }
            Err(data_sparsifier::Error::Io { source, .. }) => {
                return Err(CliError::io(&index_path, source))
            }
            Err(e) => return Err(CliError::Sharded { source: e }),
            Ok(i) => i,
        };
        let dir = data_sparsifier::format::parent_dir(&index_path).to_path_buf();
        let mut shards = Vec::new();
        let mut tensors = Vec::new();
        for file in index.shards() {
            let shard_path = dir.join(file);
            if std::fs::symlink_metadata(&shard_path).is_err() {
                let named: Vec<&str> = index
                    .weight_map()
                    .iter()
                    .filter(|(_, s)| s.as_str() == file)
                    .map(|(t, _)| t.as_str())
                    .collect();
                return Err(CliError::Sharded {
                    source: data_sparsifier::Error::InvalidIndex {
                        index: index_path.display().to_string(),
                        message: format!(
                            "shard {file:?} (holding {} tensors, {:?} first) does not exist in {}: restore it, or give the index of a complete checkpoint",
                            named.len(),
                            named[0],
                            dir.display()
                        ),
                        source: None,
                    },
                });
            }
            let ck = Checkpoint::open(&shard_path)?;
            index
                .check_shard(file, ck.tensors())
                .map_err(|e| CliError::Sharded { source: e })?;
            let first = tensors.len();
            tensors.extend(ck.tensors().iter().cloned());
            shards.push(Shard {
                file: file.to_string(),
                ck,
                first,
            });
        }
        Ok(Input {
            path: path.to_path_buf(),
            index: Some((index_path, index)),
            shards,
            tensors,
        })
    }

    /// The path as given.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The index file and its contents, for a sharded checkpoint.
    pub fn index(&self) -> Option<(&Path, &ShardIndex)> {
        self.index.as_ref().map(|(p, i)| (p.as_path(), i))
    }
    /// Whether it is a sharded checkpoint.
    pub fn is_sharded(&self) -> bool {
        self.index.is_some()
    }
    /// The files, in order (one for a single file).
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }
    /// Every tensor, shard by shard.
    pub fn tensors(&self) -> &[TensorEntry] {
        &self.tensors
    }
    /// The shard holding tensor `g` (a number across the input) and its index in that shard.
    pub fn locate(&self, g: usize) -> (&Shard, usize) {
        let s = self.shards.partition_point(|s| s.first <= g) - 1;
        let shard = &self.shards[s];
        (shard, g - shard.first)
    }
    /// Tensor `g` as typed data (zero-copy unless unaligned).
    pub fn data(&self, g: usize) -> Result<TensorData<'_>> {
        let (shard, i) = self.locate(g);
        shard.ck.data(i)
    }
    /// The size of every file (the index not included).
    pub fn file_len(&self) -> u64 {
        self.shards.iter().map(|s| s.ck.file_len() as u64).sum()
    }
}
