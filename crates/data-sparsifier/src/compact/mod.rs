//! Compact storage of sparsified tables: only the kept blocks' values, a bit-packed mask of kept
//! blocks, optional per-row parameters, and a remap of the rows that were pruned entirely
//! (PyTorch's `torch._rowwise_prune`: int32, `-1` = pruned), in a standard safetensors file
//! (layout and a numpy reader in `docs/compact-format.md`).
//!
//! * [`CompactTable`]: one table, encoded from its data and mask ([`CompactTable::encode`]) or read
//!   zero-copy from a file; it expands back to the squashed dense table
//!   ([`CompactTable::to_tensor`]) bit for bit for the float encodings.
//! * [`CompactSink`]: the [`TensorSink`](crate::format::TensorSink) that writes a compact file
//!   (sparsified tensors compact, the others as they are), all or nothing.
//! * [`CompactFile`]: a compact file read through any [`TensorSource`](crate::format::TensorSource)
//!   (the memory-mapped [`SafetensorsSource`](crate::format::safetensors::SafetensorsSource)),
//!   validated; [`expand`] writes it back as a dense safetensors file.
//! * [`CompactEmbedding`] / [`CompactEmbeddingBag`]: PyTorch's lookups straight over a compact
//!   table, with the dense modules' semantics (the same bag reduction code).
//!
//! ```
//! use data_sparsifier::compact::{CompactOptions, CompactTable};
//! use data_sparsifier::{Mask, Tensor};
//! let w = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [2, 4]).unwrap();
//! // Keep the first (1, 2) block of row 0; row 1 is pruned entirely.
//! let mask = Mask::from_dense_u8([2, 4], &[1, 1, 0, 0, 0, 0, 0, 0]).unwrap();
//! let t = CompactTable::encode(w.view(), &mask, &CompactOptions::default()).unwrap();
//! assert_eq!((t.info().block_width, t.info().values), (2, 2)); // 2 values stored, not 8
//! assert_eq!(t.to_tensor().unwrap().to_f64_vec(), vec![1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
//! ```

mod file;
mod kernel;
mod lookup;
mod table;

pub use file::{expand, CompactFile, CompactSink, Entry};
pub use lookup::{CompactEmbedding, CompactEmbeddingBag};
pub use table::{CompactOptions, CompactTable, RemapPolicy};

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::format::FileDType;
use crate::quant::RowCodec;

/// The `__metadata__` key of a compact file; its value is the JSON [`FileMeta`].
pub const METADATA_KEY: &str = "data_sparsifier.compact";
/// The `format` field of [`FileMeta`].
pub const FORMAT_NAME: &str = "data-sparsifier-compact";
/// The layout version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Suffix of a table's bit-packed mask of kept blocks (`U8`).
pub const BLOCKS_SUFFIX: &str = "@blocks";
/// Suffix of a table's row remap (`I32`, `-1` = pruned row), when stored.
pub const REMAP_SUFFIX: &str = "@remap";
/// Suffix of a table's per-row quantization parameters, for quantized encodings.
pub const PARAMS_SUFFIX: &str = "@params";
/// Suffix of a table's kept values (the encoding's dtype).
pub const VALUES_SUFFIX: &str = "@values";

/// How a table's kept values are stored.
///
/// The float encodings store the values as they are (the table's own dtype), so expanding is
/// exact. The quantized encodings store each stored row's kept cells as the crate's rowwise
/// codes ([`RowCodec`]: int8 with f32 scale and bias, int4 and int2 with f16 scale and bias, all
/// computed over the kept cells only) and the row's parameters under [`PARAMS_SUFFIX`].
///
/// ```
/// use data_sparsifier::compact::Encoding;
/// use data_sparsifier::DType;
/// assert_eq!(Encoding::for_dtype(DType::BF16), Encoding::BF16);
/// assert_eq!(Encoding::BF16.to_string(), "bf16");
/// assert_eq!("f16".parse::<Encoding>().unwrap(), Encoding::F16);
/// assert!("int3".parse::<Encoding>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Encoding {
    /// f32 values.
    F32,
    /// f64 values.
    F64,
    /// IEEE half values.
    F16,
    /// bfloat16 values.
    BF16,
    /// Rowwise int8 codes over the kept cells, f32 scale and bias per row.
    Int8,
    /// Rowwise int4 codes over the kept cells (two a byte, element 0 in the low nibble), f16
    /// scale and bias per row.
    Int4,
    /// Rowwise int2 codes over the kept cells (four a byte, element 0 in the low bits), f16
    /// scale and bias per row.
    Int2,
}

impl Encoding {
    /// The float encoding of a dtype (values stored unchanged).
    pub const fn for_dtype(d: DType) -> Self {
        match d {
            DType::F32 => Encoding::F32,
            DType::F64 => Encoding::F64,
            DType::F16 => Encoding::F16,
            DType::BF16 => Encoding::BF16,
        }
    }
    /// The name used in the metadata.
    pub const fn name(self) -> &'static str {
        match self {
            Encoding::F32 => "f32",
            Encoding::F64 => "f64",
            Encoding::F16 => "f16",
            Encoding::BF16 => "bf16",
            Encoding::Int8 => "int8",
            Encoding::Int4 => "int4",
            Encoding::Int2 => "int2",
        }
    }
    /// The rowwise codec of a quantized encoding.
    pub const fn codec(self) -> Option<RowCodec> {
        match self {
            Encoding::Int8 => Some(RowCodec::Int8),
            Encoding::Int4 => Some(RowCodec::Int4),
            Encoding::Int2 => Some(RowCodec::Int2),
            _ => None,
        }
    }
    /// The dtype of `NAME@params` (`[stored_rows, 2]`: scale, bias), for a quantized encoding.
    pub fn params_dtype(self) -> Option<FileDType> {
        match self {
            Encoding::Int8 => Some(FileDType::F32),
            Encoding::Int4 | Encoding::Int2 => Some(FileDType::F16),
            _ => None,
        }
    }
    /// The dtype of the stored values, for the float encodings.
    pub const fn float(self) -> Option<DType> {
        match self {
            Encoding::F32 => Some(DType::F32),
            Encoding::F64 => Some(DType::F64),
            Encoding::F16 => Some(DType::F16),
            Encoding::BF16 => Some(DType::BF16),
            Encoding::Int8 | Encoding::Int4 | Encoding::Int2 => None,
        }
    }
    /// The stored dtype of the `@values` tensor.
    pub fn values_dtype(self) -> FileDType {
        match self.float() {
            Some(d) => d.into(),
            None => FileDType::U8,
        }
    }
    /// Bytes of per-row parameters (0 for the float encodings).
    pub fn params_bytes_per_row(self) -> usize {
        self.codec().map_or(0, RowCodec::param_bytes)
    }
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Encoding {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        [
            Encoding::F32,
            Encoding::F64,
            Encoding::F16,
            Encoding::BF16,
            Encoding::Int8,
            Encoding::Int4,
            Encoding::Int2,
        ]
        .into_iter()
        .find(|e| e.name() == s)
        .ok_or_else(|| Error::UnsupportedDType {
            what: "compact encoding (f32, f64, f16, bf16, int8, int4, int2)".into(),
            dtype: s.to_string(),
        })
    }
}

/// One table's entry in [`FileMeta::tables`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableInfo {
    /// The table's shape (what `expand` writes).
    pub shape: Vec<usize>,
    /// The table's dtype as safetensors spells it (what `expand` writes).
    pub dtype: String,
    /// How the kept values are stored.
    pub encoding: Encoding,
    /// Rows of the 2-D view (`shape` without its last dim, multiplied; 1 for 0-/1-D).
    pub rows: usize,
    /// Columns of the 2-D view (the last dim; 1 for 0-D).
    pub cols: usize,
    /// Width of a block: every row is cut into `ceil(cols / block_width)` blocks, one mask bit each.
    pub block_width: usize,
    /// Rows stored (all of them without a remap, the rows not pruned entirely with one).
    pub stored_rows: usize,
    /// Number of stored values (cells of kept blocks); for a quantized encoding, codes (the
    /// `@values` tensor holds each stored row's codes from a byte boundary).
    pub values: usize,
    /// Whether `NAME@remap` is stored.
    pub remap: bool,
}

impl TableInfo {
    /// Blocks per row.
    pub fn blocks_per_row(&self) -> usize {
        self.cols.div_ceil(self.block_width.max(1))
    }
    /// Bytes of the dense table.
    pub fn dense_bytes(&self) -> usize {
        self.rows * self.cols * self.file_dtype().map_or(0, |d| d.size_in_bytes())
    }
    /// The table's dtype.
    pub fn file_dtype(&self) -> Option<DType> {
        self.dtype.parse::<DType>().ok()
    }
}

/// The JSON under [`METADATA_KEY`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileMeta {
    /// [`FORMAT_NAME`].
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub version: u32,
    /// Every tensor of the dense file, in its order: tables and tensors stored as they are.
    pub order: Vec<String>,
    /// The compact tables by name.
    pub tables: std::collections::BTreeMap<String, TableInfo>,
}

/// `(rows, cols)` of the 2-D view of a shape: the last dim is the columns.
pub(crate) fn matrix_dims(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [lead @ .., last] => (lead.iter().product(), *last),
    }
}
