//! The storage seam: where tensors come from ([`TensorSource`]) and where they go
//! ([`TensorSink`]), independent of the file format.
//!
//! * A **source** lists named tensors in storage order, with their stored dtype ([`FileDType`]) and
//!   shape, and hands out each tensor's bytes zero-copy ([`TensorSource::bytes`]) or as a typed
//!   view ([`TensorSource::data`]).
//! * A **sink** receives every tensor of a run in the order it declared up front, streaming: a
//!   tensor copied unchanged ([`TensorSink::write_raw`]) or a sparsified one as its original data
//!   and its mask ([`TensorSink::write_masked`]); what it stores of them is its own business (the
//!   squashed values, the mask alone, data and mask, a compact encoding). [`TensorSink::finish`]
//!   leaves the output complete and fsynced but not in place: a [`Staged`] set of files that
//!   [`Staged::commit`]s all or nothing, so several sinks (or the shards of one) appear together.
//!   Dropping a sink or a `Staged` aborts: the temp files are removed.
//!
//! [`safetensors`] is the one format implemented here: [`SafetensorsSource`](safetensors::SafetensorsSource)
//! and the sinks [`SquashedSink`](safetensors::SquashedSink) (`mask · data`, the `sparsify run`
//! output) and [`MaskSink`](safetensors::MaskSink) (dense `U8` masks); the state file's sink is
//! [`StateWriter`](crate::state::StateWriter). A new format is a new module here with its own
//! source and sinks; nothing else changes.

pub mod safetensors;
pub mod sharded;

use std::collections::BTreeMap;
use std::fmt;

use crate::dtype::DType;
use crate::error::{Error, Result};
pub use crate::io::{parent_dir, write_atomic, AtomicFile, CommitMode, MappedFile, Staged};
use crate::mask::Mask;
use crate::tensor::{Slice, Tensor, TensorView};

/// The element type of a stored tensor: any a file may hold, floats or not.
///
/// ```
/// use data_sparsifier::format::FileDType;
/// use data_sparsifier::DType;
/// assert_eq!(FileDType::BF16.float(), Some(DType::BF16));
/// assert_eq!(FileDType::I64.float(), None);
/// assert_eq!((FileDType::I64.size_in_bytes(), FileDType::I64.to_string()), (8, "I64".to_string()));
/// assert_eq!(FileDType::from(DType::F16), FileDType::F16);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum FileDType {
    Bool,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    F64,
    I64,
    U64,
}

impl FileDType {
    /// Bytes per element.
    pub const fn size_in_bytes(self) -> usize {
        use FileDType::*;
        match self {
            Bool | U8 | I8 | F8E5M2 | F8E4M3 => 1,
            I16 | U16 | F16 | BF16 => 2,
            I32 | U32 | F32 => 4,
            F64 | I64 | U64 => 8,
        }
    }
    /// The float type this crate computes on, if it is one.
    pub const fn float(self) -> Option<DType> {
        match self {
            FileDType::F32 => Some(DType::F32),
            FileDType::F64 => Some(DType::F64),
            FileDType::F16 => Some(DType::F16),
            FileDType::BF16 => Some(DType::BF16),
            _ => None,
        }
    }
    /// The name as safetensors spells it (`F32`, `BOOL`, `F8_E4M3`).
    pub const fn name(self) -> &'static str {
        use FileDType::*;
        match self {
            Bool => "BOOL",
            U8 => "U8",
            I8 => "I8",
            F8E5M2 => "F8_E5M2",
            F8E4M3 => "F8_E4M3",
            I16 => "I16",
            U16 => "U16",
            F16 => "F16",
            BF16 => "BF16",
            I32 => "I32",
            U32 => "U32",
            F32 => "F32",
            F64 => "F64",
            I64 => "I64",
            U64 => "U64",
        }
    }
    /// The float type, or an [`Error::UnsupportedDType`] naming `what`.
    pub fn require_float(self, what: &str) -> Result<DType> {
        self.float().ok_or_else(|| Error::UnsupportedDType {
            what: what.to_string(),
            dtype: self.name().to_string(),
        })
    }
}

impl From<DType> for FileDType {
    fn from(d: DType) -> Self {
        match d {
            DType::F32 => FileDType::F32,
            DType::F64 => FileDType::F64,
            DType::F16 => FileDType::F16,
            DType::BF16 => FileDType::BF16,
        }
    }
}

impl fmt::Display for FileDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One stored tensor: name, element type, shape.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub dtype: FileDType,
    /// Its shape.
    pub shape: Vec<usize>,
}

impl TensorInfo {
    /// A tensor description.
    pub fn new(name: impl Into<String>, dtype: FileDType, shape: impl Into<Vec<usize>>) -> Self {
        TensorInfo {
            name: name.into(),
            dtype,
            shape: shape.into(),
        }
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// Size of the data in bytes.
    pub fn byte_len(&self) -> usize {
        self.numel() * self.dtype.size_in_bytes()
    }
}

/// Named tensors to read, in storage order, zero-copy.
pub trait TensorSource {
    /// The tensors, in storage order.
    fn tensors(&self) -> &[TensorInfo];
    /// The source's string metadata, if it has any.
    fn metadata(&self) -> Option<&BTreeMap<String, String>>;
    /// The stored bytes of tensor `index` (little endian), borrowed.
    fn bytes(&self, index: usize) -> &[u8];
    /// The total size of the source in bytes.
    fn total_bytes(&self) -> u64;
    /// Tensor `index` as typed data: borrowed when its bytes are aligned for its dtype, else a
    /// copy of that one tensor. Non-float tensors are an [`Error::UnsupportedDType`].
    fn data(&self, index: usize) -> Result<TensorData<'_>> {
        let t = &self.tensors()[index];
        TensorData::new(t.dtype.require_float(&t.name)?, self.bytes(index))
    }
}

/// The typed data of one stored tensor: a zero-copy slice of the source when its bytes are
/// aligned for the dtype, else an owned copy of that one tensor.
///
/// ```
/// use data_sparsifier::format::TensorData;
/// use data_sparsifier::DType;
/// let bytes: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
/// let d = TensorData::new(DType::F32, &bytes[..]).unwrap();
/// assert_eq!(d.view(&[2]).unwrap().to_tensor().to_f64_vec(), vec![1.0, 2.0]);
/// let odd = TensorData::new(DType::F32, &[0u8, 0, 0, 0, 0][1..]).unwrap(); // misaligned
/// assert!(odd.is_copy() || odd.view(&[1]).is_ok());
/// ```
pub enum TensorData<'a> {
    /// Borrowed from the source.
    Borrowed(Slice<'a>),
    /// Copied (the bytes were not aligned).
    Copied(Tensor),
}

impl<'a> TensorData<'a> {
    /// Typed data of `bytes` (little endian) as `dtype`.
    pub fn new(dtype: DType, bytes: &'a [u8]) -> Result<Self> {
        match Slice::try_from_bytes(dtype, bytes) {
            Some(s) => Ok(TensorData::Borrowed(s)),
            None => {
                let n = bytes.len() / dtype.size_in_bytes();
                Tensor::from_le_bytes(dtype, [n], bytes).map(TensorData::Copied)
            }
        }
    }
    /// Whether the data had to be copied.
    pub fn is_copy(&self) -> bool {
        matches!(self, TensorData::Copied(_))
    }
    /// The typed slice.
    pub fn slice(&self) -> Slice<'_> {
        match self {
            TensorData::Borrowed(s) => *s,
            TensorData::Copied(t) => t.storage().as_slice(),
        }
    }
    /// A view with `shape` (which must hold the same element count).
    pub fn view<'s>(&'s self, shape: &'s [usize]) -> Result<TensorView<'s>> {
        TensorView::from_slice(self.slice(), shape)
    }
}

/// Named tensors to write, streaming, in the order the sink was created with.
///
/// Every tensor of a run is offered to every sink, in order; a sink stores what it declared and
/// skips the rest. A sink checks that each tensor is the one it expects next, so a misordered
/// write is an error, never a corrupt file.
pub trait TensorSink {
    /// The next tensor, copied unchanged: its stored bytes.
    fn write_raw(&mut self, name: &str, bytes: &[u8]) -> Result<()>;
    /// The next sparsified tensor: its original data and its mask (of the data's shape).
    fn write_masked(&mut self, name: &str, data: TensorView<'_>, mask: &Mask) -> Result<()>;
    /// Checks that everything declared was written and fsyncs; nothing is in place until the
    /// returned [`Staged`] is committed.
    fn finish(self: Box<Self>) -> Result<Staged>;
    /// The tensors the output file holds, in its order, once everything is written (call it
    /// after the last write, before [`finish`](Self::finish)); what a shard index lists. `None`
    /// for a sink whose output is not one tensor file.
    fn stored_tensors(&self) -> Option<Vec<TensorInfo>> {
        None
    }
}
