//! Reading and writing safetensors files the way this project needs: memory-mapped input, and a
//! streaming, order-preserving, atomic writer.
//!
//! The `safetensors` crate's own serializer sorts tensors by dtype and name and needs every tensor in
//! memory at once; [`SafetensorsWriter`] instead writes the header first (sizes are known up front),
//! then each tensor's bytes in the order given, in as many pieces as the caller likes, into an
//! [`AtomicFile`]. The result is a standard safetensors file that PyTorch, candle and the
//! `safetensors` crate load.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use memmap2::Mmap;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::io::AtomicFile;

/// A read-only memory map of a whole file. Files larger than RAM work: pages are read on demand.
pub struct MappedFile {
    map: Option<Mmap>,
}

impl MappedFile {
    /// Maps `path` read-only. An empty file maps to an empty slice.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            return Ok(MappedFile { map: None });
        }
        // SAFETY: the map is read-only and private to this process. The one hazard of any file map is
        // another process truncating or rewriting the file while it is mapped; this crate's own writes
        // never do that (they replace files by rename, which leaves the mapped inode intact), and the
        // alternative, reading the whole file, defeats inputs larger than RAM. Benchmarks and the CLI's
        // streaming design rely on this.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        Ok(MappedFile { map: Some(map) })
    }
    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or(&[])
    }
}

/// Parses safetensors bytes, mapping the parser's error into [`Error::Safetensors`].
pub fn parse<'a>(bytes: &'a [u8], source: &str) -> Result<safetensors::SafeTensors<'a>> {
    safetensors::SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        source_name: Some(source.to_string()),
        message: e.to_string(),
    })
}

/// Reads only the `__metadata__` of safetensors bytes.
pub fn read_metadata(bytes: &[u8], source: &str) -> Result<Option<BTreeMap<String, String>>> {
    let (_, meta) =
        safetensors::SafeTensors::read_metadata(bytes).map_err(|e| Error::Safetensors {
            source_name: Some(source.to_string()),
            message: e.to_string(),
        })?;
    Ok(meta
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()))
}

/// The header entry of one tensor to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorHeader {
    /// The tensor's name.
    pub name: String,
    /// Its dtype.
    pub dtype: safetensors::Dtype,
    /// Its shape.
    pub shape: Vec<usize>,
}

impl TensorHeader {
    /// A header entry.
    pub fn new(
        name: impl Into<String>,
        dtype: safetensors::Dtype,
        shape: impl Into<Vec<usize>>,
    ) -> Self {
        TensorHeader {
            name: name.into(),
            dtype,
            shape: shape.into(),
        }
    }
    /// The byte size of the data.
    pub fn byte_len(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }
}

#[derive(Serialize)]
struct HeaderInfo<'a> {
    dtype: safetensors::Dtype,
    shape: &'a [usize],
    data_offsets: (usize, usize),
}

/// Writes a safetensors file tensor by tensor, in the order given, atomically.
///
/// ```
/// use data_sparsifier::safetensors_file::{SafetensorsWriter, TensorHeader};
/// use safetensors::Dtype;
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("t.safetensors");
/// let headers = vec![
///     TensorHeader::new("b", Dtype::F32, [2]),
///     TensorHeader::new("a", Dtype::U8, [3]),
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
        tensors: &[TensorHeader],
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
        tensors: &[TensorHeader],
        metadata: Option<&BTreeMap<String, String>>,
    ) -> Result<Vec<u8>> {
        // serde_json's map keeps insertion order only with a Vec of pairs; build the object by hand.
        let mut out = String::from("{");
        let mut first = true;
        if let Some(meta) = metadata {
            out.push_str("\"__metadata__\":");
            out.push_str(
                &serde_json::to_string(meta).map_err(|e| Error::invalid_state(e.to_string()))?,
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
                dtype: t.dtype,
                shape: &t.shape,
                data_offsets: (offset, offset + len),
            };
            offset += len;
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(
                &serde_json::to_string(&t.name).map_err(|e| Error::invalid_state(e.to_string()))?,
            );
            out.push(':');
            out.push_str(
                &serde_json::to_string(&info).map_err(|e| Error::invalid_state(e.to_string()))?,
            );
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
        if self.remaining != 0 {
            return Err(Error::invalid_state(format!(
                "writing {}: {} bytes of tensor data missing",
                self.path, self.remaining
            )));
        }
        self.file.commit()
    }
}
