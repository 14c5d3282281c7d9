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
/// use data_sparsifier::safetensors_file::check_offsets;
/// let header = br#"{"t":{"dtype":"F32","shape":[4611686018427387903],"data_offsets":[0,18446744073709551612]}}"#;
/// let mut file = (header.len() as u64).to_le_bytes().to_vec();
/// file.extend_from_slice(header);
/// assert!(check_offsets(&file).is_err());
/// ```
pub fn check_offsets(bytes: &[u8]) -> std::result::Result<(), String> {
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
            return Err(format!(
                "the data of tensor {name:?} would end past the end of the file (truncated?)"
            ));
        }
    }
    Ok(())
}

fn checked(bytes: &[u8], source: &str) -> Result<()> {
    check_offsets(bytes).map_err(|message| Error::Safetensors {
        source_name: Some(source.to_string()),
        message,
    })
}

/// Parses safetensors bytes, mapping the parser's error into [`Error::Safetensors`].
pub fn parse<'a>(bytes: &'a [u8], source: &str) -> Result<safetensors::SafeTensors<'a>> {
    checked(bytes, source)?;
    safetensors::SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
        source_name: Some(source.to_string()),
        message: e.to_string(),
    })
}

/// Reads only the `__metadata__` of safetensors bytes.
pub fn read_metadata(bytes: &[u8], source: &str) -> Result<Option<BTreeMap<String, String>>> {
    checked(bytes, source)?;
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
        assert_eq!(check_offsets(&file), Ok(()));
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
