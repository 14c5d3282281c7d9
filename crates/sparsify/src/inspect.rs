//! `sparsify inspect`: what a safetensors file holds, and how sparse each tensor is.

use std::collections::BTreeMap;
use std::path::Path;

use data_sparsifier::format::FileDType as Dtype;
use serde::Serialize;

use crate::checkpoint::{Checkpoint, Input};
use crate::error::Result;
use crate::report::{self, Table};

/// One tensor of the inspected file.
#[derive(Debug, Clone, Serialize)]
pub struct TensorInfo {
    /// Its name.
    pub name: String,
    /// Its dtype (safetensors spelling).
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its data size.
    pub bytes: u64,
    /// Number of elements.
    pub numel: u64,
    /// Number of elements equal to zero (`-0.0` counts for floats).
    pub zeros: u64,
    /// `zeros / numel` (0 for an empty tensor).
    pub zero_fraction: f64,
    /// Whether it is a floating-point tensor `sparsify run` can sparsify.
    pub float: bool,
    /// The shard file holding it (a sharded checkpoint only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

/// Totals over the file.
#[derive(Debug, Clone, Serialize)]
pub struct InspectTotals {
    /// Number of tensors.
    pub tensors: usize,
    /// Files: 1, or the shards of a sharded checkpoint.
    pub shards: usize,
    /// File size (of every shard).
    pub file_bytes: u64,
    /// Tensor data bytes.
    pub bytes: u64,
    /// Elements.
    pub numel: u64,
    /// Zero elements.
    pub zeros: u64,
    /// Zero fraction over all elements.
    pub zero_fraction: f64,
    /// Zero fraction over floating-point elements.
    pub float_zero_fraction: f64,
}

/// One compact table of the inspected file.
#[derive(Debug, Clone, Serialize)]
pub struct CompactInfo {
    /// The table's name.
    pub name: String,
    /// How its kept values are stored (f32, f16, bf16, ...).
    pub encoding: String,
    /// Its dense dtype.
    pub dtype: String,
    /// Its dense shape.
    pub shape: Vec<usize>,
    /// Block width (columns per mask bit).
    pub block_width: usize,
    /// Stored values over cells.
    pub density: f64,
    /// Whether the row remap is stored, and the rows it prunes.
    pub remap: bool,
    /// Rows pruned entirely (stored rows subtracted from rows when there is a remap).
    pub pruned_rows: u64,
    /// Bytes of its stored tensors (values, block mask, remap, parameters).
    pub bytes: u64,
    /// Bytes of its dense form.
    pub dense_bytes: u64,
    /// `bytes / dense_bytes`.
    pub ratio: f64,
}

/// What `inspect --report json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// The file (the folder or index given, for a sharded checkpoint).
    pub file: String,
    /// The `__metadata__` (a sharded checkpoint: its index's `metadata`, values as JSON text
    /// unless strings).
    pub metadata: BTreeMap<String, String>,
    /// The tensors, in file order.
    pub tensors: Vec<TensorInfo>,
    /// The compact tables, for a compact file (`run --format compact`).
    pub compact: Vec<CompactInfo>,
    /// Totals.
    pub totals: InspectTotals,
}

/// Counts zero elements of little-endian `bytes` of `dtype`, at any alignment. For floats the sign
/// bit is ignored (so `-0.0` is zero); for integers and bool, all bytes must be zero.
pub fn count_zeros(dtype: Dtype, bytes: &[u8]) -> u64 {
    fn count<const N: usize>(bytes: &[u8], sign_mask: u128) -> u64 {
        bytes
            .chunks_exact(N)
            .filter(|c| {
                let mut v = 0u128;
                for (i, b) in c.iter().enumerate() {
                    v |= (*b as u128) << (8 * i);
                }
                v & !sign_mask == 0
            })
            .count() as u64
    }
    match dtype {
        Dtype::F64 => count::<8>(bytes, 1 << 63),
        Dtype::F32 => count::<4>(bytes, 1 << 31),
        Dtype::F16 | Dtype::BF16 => count::<2>(bytes, 1 << 15),
        Dtype::F8E4M3 | Dtype::F8E5M2 => count::<1>(bytes, 1 << 7),
        other => match other.size_in_bytes() {
            8 => count::<8>(bytes, 0),
            4 => count::<4>(bytes, 0),
            2 => count::<2>(bytes, 0),
            _ => count::<1>(bytes, 0),
        },
    }
}

/// Inspects `path`: a safetensors file, or a sharded checkpoint (its folder or index).
pub fn inspect(path: &Path) -> Result<InspectReport> {
    let input = Input::open(path)?;
    let mut tensors = Vec::with_capacity(input.tensors().len());
    let mut compact = Vec::new();
    for shard in input.shards() {
        let ck = &shard.ck;
        for (i, t) in ck.tensors().iter().enumerate() {
            let bytes = ck.bytes(i);
            let numel = t.numel() as u64;
            let zeros = count_zeros(t.dtype, bytes);
            tensors.push(TensorInfo {
                name: t.name.clone(),
                dtype: t.dtype.to_string(),
                shape: t.shape.clone(),
                bytes: bytes.len() as u64,
                numel,
                zeros,
                zero_fraction: if numel == 0 {
                    0.0
                } else {
                    zeros as f64 / numel as f64
                },
                float: t.dtype.float().is_some(),
                shard: input.is_sharded().then(|| shard.file.clone()),
            });
        }
        compact.extend(compact_tables(ck)?);
    }
    let sum = |f: &dyn Fn(&TensorInfo) -> u64, only_float: bool| -> u64 {
        tensors
            .iter()
            .filter(|t| !only_float || t.float)
            .map(f)
            .sum()
    };
    let (numel, zeros) = (sum(&|t| t.numel, false), sum(&|t| t.zeros, false));
    let (fnumel, fzeros) = (sum(&|t| t.numel, true), sum(&|t| t.zeros, true));
    let frac = |z: u64, n: u64| if n == 0 { 0.0 } else { z as f64 / n as f64 };
    let metadata = match input.index() {
        Some((_, index)) => index
            .metadata()
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s.clone(),
                    v => v.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        None => input.shards()[0].ck.metadata().cloned().unwrap_or_default(),
    };
    Ok(InspectReport {
        compact,
        file: path.display().to_string(),
        metadata,
        totals: InspectTotals {
            tensors: tensors.len(),
            shards: input.shards().len(),
            file_bytes: input.file_len(),
            bytes: sum(&|t| t.bytes, false),
            numel,
            zeros,
            zero_fraction: frac(zeros, numel),
            float_zero_fraction: frac(fzeros, fnumel),
        },
        tensors,
    })
}

/// The compact tables of a file with compact metadata (checked; a tampered one is an error).
fn compact_tables(ck: &Checkpoint) -> Result<Vec<CompactInfo>> {
    let compact = ck
        .metadata()
        .is_some_and(|m| m.contains_key(data_sparsifier::compact::METADATA_KEY));
    if !compact {
        return Ok(Vec::new());
    }
    let file = crate::expand::read_compact(ck)?;
    Ok(file
        .tables()
        .iter()
        .map(|(name, t)| {
            let i = t.info();
            let (bytes, dense) = (t.stored_bytes() as u64, i.dense_bytes() as u64);
            let cells = (i.rows * i.cols) as f64;
            CompactInfo {
                name: name.clone(),
                encoding: i.encoding.to_string(),
                dtype: i.dtype.clone(),
                shape: i.shape.clone(),
                block_width: i.block_width,
                density: if cells == 0.0 {
                    0.0
                } else {
                    i.values as f64 / cells
                },
                remap: i.remap,
                pruned_rows: if i.remap {
                    (i.rows - i.stored_rows) as u64
                } else {
                    0
                },
                bytes,
                dense_bytes: dense,
                ratio: if dense == 0 {
                    0.0
                } else {
                    bytes as f64 / dense as f64
                },
            }
        })
        .collect())
}

impl InspectReport {
    /// The human-readable table.
    pub fn render(&self) -> String {
        let sharded = self.tensors.iter().any(|t| t.shard.is_some());
        let mut cols = vec!["tensor", "dtype", "shape", ">bytes", ">zeros"];
        if sharded {
            cols.push("shard");
        }
        let mut t = Table::new(&cols);
        for r in &self.tensors {
            let mut row = vec![
                r.name.clone(),
                r.dtype.clone(),
                report::shape(&r.shape),
                report::bytes(r.bytes),
                report::percent(r.zero_fraction),
            ];
            if let Some(s) = r.shard.as_ref().filter(|_| sharded) {
                row.push(s.clone());
            }
            t.row(row);
        }
        let mut out = format!("{}\n", self.file);
        out.push_str(&t.render());
        if !self.compact.is_empty() {
            let mut c = Table::new(&[
                "compact table",
                "encoding",
                "shape",
                ">block",
                ">density",
                ">bytes",
                ">dense",
                ">ratio",
            ]);
            for r in &self.compact {
                c.row(vec![
                    r.name.clone(),
                    r.encoding.clone(),
                    report::shape(&r.shape),
                    format!("1x{}", r.block_width),
                    report::percent(r.density),
                    report::bytes(r.bytes),
                    report::bytes(r.dense_bytes),
                    format!("{:.3}x", r.ratio),
                ]);
            }
            out.push_str(&c.render());
        }
        let tt = &self.totals;
        out.push_str(&format!(
            "total: {} tensors{}, {} of data ({} file), {} zeros ({} of floating-point elements)\n",
            tt.tensors,
            if sharded {
                format!(" in {} shards", tt.shards)
            } else {
                String::new()
            },
            report::bytes(tt.bytes),
            report::bytes(tt.file_bytes),
            report::percent(tt.zero_fraction),
            report::percent(tt.float_zero_fraction),
        ));
        for (k, v) in &self.metadata {
            let v = if v.chars().count() > 200 {
                format!("{}...", v.chars().take(200).collect::<String>())
            } else {
                v.clone()
            };
            out.push_str(&format!("metadata {k}: {v}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_of_every_kind() {
        let f: Vec<u8> = [0.0f32, -0.0, 1.0]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(count_zeros(Dtype::F32, &f), 2);
        let i: Vec<u8> = [0i32, i32::MIN, 3]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(count_zeros(Dtype::I32, &i), 1);
        assert_eq!(count_zeros(Dtype::U8, &[0, 1, 0]), 2);
        assert_eq!(count_zeros(Dtype::F16, &[0, 0x80, 0, 0x3c]), 1);
    }
}
