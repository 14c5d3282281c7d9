//! [`CompactTable`]: one table's kept blocks, its block mask and row remap, encoded and decoded.

use std::borrow::Cow;

use rayon::prelude::*;

use super::kernel;
use super::{matrix_dims, Encoding, TableInfo};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::format::{FileDType, TensorData};
use crate::mask::bits::get_bits;
use crate::mask::Mask;
use crate::quant::{RowCodec, RowParams};
use crate::tensor::{Tensor, TensorView, TypedStorage};

/// Whether a table stores the remap of its pruned rows (`NAME@remap`, int32, `-1` = pruned).
///
/// A remap costs 4 bytes a row and saves, for each row pruned entirely, the row's mask bits and
/// per-row parameters. [`RemapPolicy::Auto`] stores it when that makes the table smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RemapPolicy {
    /// Store it when it makes the table smaller.
    #[default]
    Auto,
    /// Always store it (PyTorch's `_rowwise_prune` layout).
    Always,
    /// Never store it: every row is stored.
    Never,
}

/// How [`CompactTable::encode`] stores a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CompactOptions {
    /// The encoding; `None`: the table's own float dtype (exact).
    pub encoding: Option<Encoding>,
    /// The block width (columns per mask bit); `None`: the power of two up to 64 that makes the
    /// table smallest (for a mask of (1, 4) blocks, 4).
    pub block_width: Option<usize>,
    /// Whether to store the row remap.
    pub remap: RemapPolicy,
}

impl CompactOptions {
    /// The encoding a table of `dtype` gets: [`CompactOptions::encoding`], or else the dtype's own.
    ///
    /// ```
    /// use data_sparsifier::compact::{CompactOptions, Encoding};
    /// use data_sparsifier::DType;
    /// assert_eq!(CompactOptions::default().encoding_for(DType::F16), Encoding::F16);
    /// let int8 = CompactOptions { encoding: Some(Encoding::Int8), ..Default::default() };
    /// assert_eq!(int8.encoding_for(DType::F32), Encoding::Int8);
    /// ```
    pub fn encoding_for(&self, dtype: DType) -> Encoding {
        self.encoding.unwrap_or(Encoding::for_dtype(dtype))
    }
}

/// The kept values of a table, typed, borrowed from a file or owned.
pub(crate) enum Values<'a> {
    /// Float values, in the table's dtype.
    Float(TensorData<'a>),
    /// Rowwise codes: each stored row's codes from a byte boundary, and its parameters.
    Quant {
        codec: RowCodec,
        codes: Cow<'a, [u8]>,
        params: Vec<RowParams>,
        /// Offset of each stored row's first code byte, and the total at the end.
        code_start: Vec<usize>,
    },
}

/// One table in compact form: the values of its kept blocks, row by row, a bit-packed mask of
/// kept blocks (`stored_rows × ceil(cols / block_width)` bits), and optionally the int32 remap of
/// rows pruned entirely. See `docs/compact-format.md` for the layout.
///
/// A *kept block* is a block with at least one kept cell; its values are stored as the squashed
/// table has them (`mask · data`), so any mask round-trips exactly, and block-structured masks
/// (DataNorm's) store no zeros at all.
///
/// ```
/// use data_sparsifier::compact::{CompactOptions, CompactTable, RemapPolicy};
/// use data_sparsifier::{DType, Mask, Tensor};
/// let w = Tensor::from_f64s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], DType::BF16, [3, 2]).unwrap();
/// let mask = Mask::from_dense_u8([3, 2], &[0, 0, 1, 0, 0, 0]).unwrap();
/// let opts = CompactOptions { block_width: Some(1), remap: RemapPolicy::Always, ..Default::default() };
/// let t = CompactTable::encode(w.view(), &mask, &opts).unwrap();
/// assert_eq!(t.remap(), Some(&[-1, 0, -1][..])); // rows 0 and 2 are pruned entirely
/// assert_eq!((t.info().stored_rows, t.info().values), (1, 1));
/// assert_eq!(t.to_tensor().unwrap().to_f64_vec(), vec![0.0, 0.0, 3.0, 0.0, 0.0, 0.0]);
/// ```
pub struct CompactTable<'a> {
    info: TableInfo,
    dtype: DType,
    blocks: Mask,
    remap: Option<Cow<'a, [i32]>>,
    values: Values<'a>,
    /// Offset of each stored row's first value, and the total at the end.
    row_start: Vec<usize>,
    /// Every table row's stored values and parameters, for lookups: one load finds a row (see
    /// [`RowLoc`]). Empty when a row's blocks do not fit 32 bits, the last block is narrower, or
    /// there are 2^32 values or more; lookups then read the remap, `row_start` and the block mask.
    loc: Vec<RowLoc>,
    /// Blocks per row.
    nbc: usize,
}

/// Where one table row's kept values are, and how to decode them: 16 bytes, so that a lookup
/// pays one cache miss for all it needs before the values' own (the remap, the row's offset,
/// its block bits and its parameters are otherwise in four arrays).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(16))]
pub(crate) struct RowLoc {
    /// The row's first value (for the quantized encodings, first code byte).
    pub(crate) at: u32,
    /// Bit `j` set when block `j` is kept; 0 for a row pruned entirely.
    pub(crate) bits: u32,
    /// The row's parameters, for the quantized encodings.
    pub(crate) params: RowParams,
}

/// A table's stored values, typed, for the lookups' monomorphized kernels
/// ([`CompactTable::fast`]).
#[derive(Clone, Copy)]
pub(crate) enum Fast<'t, T> {
    Float(&'t [T]),
    Int8(&'t [u8]),
    Int4(&'t [u8]),
    Int2(&'t [u8]),
}

/// `loc` for a table (see the field): from each stored row's start (`starts`, with the total
/// at the end), the block mask, the remap and, quantized, each stored row's parameters.
fn row_locs(
    blocks: &Mask,
    starts: &[usize],
    remap: Option<&[i32]>,
    params: Option<&[RowParams]>,
    (rows, cols, bw): (usize, usize, usize),
) -> Vec<RowLoc> {
    let nbc = cols.div_ceil(bw);
    let total = starts.last().copied().unwrap_or(0);
    if nbc == 0 || nbc > 32 || cols % bw != 0 || u32::try_from(total).is_err() {
        return Vec::new();
    }
    let words = blocks.words();
    let stored = starts.len() - 1;
    let mut loc = crate::mem::huge_vec(rows);
    loc.par_extend(
        (0..rows)
            .into_par_iter()
            .with_min_len(ROWS_PER_TASK)
            .map(|r| {
                let s = match remap {
                    Some(m) => usize::try_from(m[r]).ok(),
                    None => (r < stored).then_some(r),
                };
                s.map_or_else(RowLoc::default, |s| RowLoc {
                    at: starts[s] as u32,
                    bits: get_bits(words, s * nbc, nbc as u32) as u32,
                    params: params.map_or_else(RowParams::default, |p| p[s]),
                })
            }),
    );
    loc
}

/// The parts of a table that [`row_locs`] reads.
fn locs_of(
    blocks: &Mask,
    row_start: &[usize],
    remap: Option<&[i32]>,
    values: &Values<'_>,
    dims: (usize, usize, usize),
) -> Vec<RowLoc> {
    match values {
        Values::Quant {
            code_start, params, ..
        } => row_locs(blocks, code_start, remap, Some(params), dims),
        Values::Float(_) => row_locs(blocks, row_start, remap, None, dims),
    }
}

impl std::fmt::Debug for CompactTable<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompactTable")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Whether any of `len` bits from `start` is set.
#[inline]
fn any_bits(words: &[u64], start: usize, len: usize) -> bool {
    let mut at = 0;
    while at < len {
        let n = (len - at).min(64);
        if get_bits(words, start + at, n as u32) != 0 {
            return true;
        }
        at += n;
    }
    false
}

/// Calls `f(j)` for every set bit `j` among `n` bits from `start`, in order.
#[inline]
fn for_each_set(words: &[u64], start: usize, n: usize, mut f: impl FnMut(usize)) {
    let mut at = 0;
    while at < n {
        let len = (n - at).min(64);
        let mut w = get_bits(words, start + at, len as u32);
        while w != 0 {
            f(at + w.trailing_zeros() as usize);
            w &= w - 1;
        }
        at += len;
    }
}

/// Number of set bits among `n` bits from `start`.
fn count_set(words: &[u64], start: usize, n: usize) -> usize {
    let mut at = 0;
    let mut c = 0;
    while at < n {
        let len = (n - at).min(64);
        c += get_bits(words, start + at, len as u32).count_ones() as usize;
        at += len;
    }
    c
}

/// Rows per parallel task when encoding.
const ROWS_PER_TASK: usize = 4096;

/// Kept blocks and kept cells of a mask cut into blocks of width `bw`, and rows with no kept block.
fn block_counts(words: &[u64], rows: usize, cols: usize, bw: usize) -> (usize, usize, usize) {
    let nbc = cols.div_ceil(bw);
    let last_w = cols - nbc.saturating_sub(1) * bw;
    (0..rows)
        .into_par_iter()
        .with_min_len(ROWS_PER_TASK)
        .map(|r| {
            let (mut blocks, mut cells) = (0usize, 0usize);
            for j in 0..nbc {
                let w = if j + 1 == nbc { last_w } else { bw };
                if any_bits(words, r * cols + j * bw, w) {
                    blocks += 1;
                    cells += w;
                }
            }
            (blocks, cells, usize::from(blocks == 0))
        })
        .reduce(|| (0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
}

/// The block width that makes a table smallest: values plus mask bits, over the powers of two up
/// to 64 (and at most the row width); the widest of equal sizes.
/// With `exact`, only widths that store no pruned cell (the mask is whole blocks) are considered.
fn best_block_width(
    words: &[u64],
    rows: usize,
    cols: usize,
    value_bits: usize,
    exact: Option<usize>,
) -> usize {
    let mut best = (usize::MAX, 1);
    for bw in [1usize, 2, 4, 8, 16, 32, 64] {
        if bw > cols.max(1) {
            break;
        }
        let (_, cells, _) = block_counts(words, rows, cols, bw);
        if exact.is_some_and(|kept| kept != cells) {
            continue;
        }
        let bits = cells * value_bits + rows * cols.div_ceil(bw);
        if bits <= best.0 {
            best = (bits, bw);
        }
    }
    best.1
}

/// Each stored row's first value and the total, from the block mask.
fn row_starts(blocks: &Mask, stored: usize, cols: usize, bw: usize) -> Vec<usize> {
    let nbc = cols.div_ceil(bw);
    let short = nbc * bw - cols; // cells the last block lacks
    let words = blocks.words();
    let mut starts = Vec::with_capacity(stored + 1);
    let mut at = 0usize;
    starts.push(0);
    for s in 0..stored {
        let kept = count_set(words, s * nbc, nbc);
        let mut cells = kept * bw;
        if kept > 0 && short > 0 && get_bits(words, s * nbc + nbc - 1, 1) == 1 {
            cells -= short;
        }
        at += cells;
        starts.push(at);
    }
    starts
}

/// What one task of rows encodes to.
struct Encoded<T> {
    /// Kept block flags, `nbc` per row.
    flags: Vec<bool>,
    /// The values of kept blocks.
    values: Vec<T>,
}

fn encode_rows<T: Element>(
    src: &[T],
    words: &[u64],
    rows: std::ops::Range<usize>,
    cols: usize,
    bw: usize,
) -> Encoded<T> {
    let nbc = cols.div_ceil(bw);
    let mut out = Encoded {
        flags: Vec::with_capacity(rows.len() * nbc),
        values: Vec::new(),
    };
    for r in rows {
        for j in 0..nbc {
            let c0 = j * bw;
            let w = bw.min(cols - c0);
            let start = r * cols + c0;
            let kept = any_bits(words, start, w);
            out.flags.push(kept);
            if kept {
                for k in 0..w {
                    let keep = get_bits(words, start + k, 1) == 1;
                    out.values.push(if keep { src[start + k] } else { T::ZERO });
                }
            }
        }
    }
    out
}

fn invalid(table: &str, message: impl Into<String>) -> Error {
    Error::InvalidCompact {
        source_name: None,
        table: table.to_string(),
        message: message.into(),
    }
}

impl CompactTable<'static> {
    /// Encodes `data` (any shape; its 2-D view is rows × last dim) under `mask` (of the data's
    /// shape): the values of the kept blocks (as `mask · data`), the block mask, and the remap
    /// of the rows pruned entirely as `opts.remap` says.
    ///
    /// ```
    /// use data_sparsifier::compact::{CompactOptions, CompactTable, Encoding};
    /// use data_sparsifier::{Mask, Tensor};
    /// let w = Tensor::from_vec(vec![1.0f64, 2.0, 3.0], [3]).unwrap();
    /// let t = CompactTable::encode(w.view(), &Mask::ones([3]), &CompactOptions::default()).unwrap();
    /// assert_eq!((t.info().encoding, t.info().rows, t.info().cols), (Encoding::F64, 1, 3));
    /// assert!(CompactTable::encode(w.view(), &Mask::ones([4]), &CompactOptions::default()).is_err());
    /// ```
    pub fn encode(data: TensorView<'_>, mask: &Mask, opts: &CompactOptions) -> Result<Self> {
        mask.check_shape("compact table mask", data.shape())?;
        let dtype = data.dtype();
        let encoding = opts.encoding_for(dtype);
        let codec = encoding.codec();
        if codec.is_none() && encoding.float() != Some(dtype) {
            return Err(Error::UnsupportedDType {
                what: format!("compact encoding {encoding} of a {dtype} table (float tables keep their own dtype)"),
                dtype: dtype.safetensors_name().to_string(),
            });
        }
        let (rows, cols) = matrix_dims(data.shape());
        let words = mask.words();
        let bw = match opts.block_width {
            Some(bw) if bw == 0 || bw > cols.max(1) => {
                return Err(Error::invalid_config(
                    "compact table",
                    "block_width",
                    bw as f64,
                    format!("a width in [1, {}] (the row width)", cols.max(1)),
                ))
            }
            Some(bw) => bw,
            // Quantized: a pruned cell inside a kept block would widen its row's range, so the
            // width must keep whole blocks only (width 1 always does).
            None => match codec {
                None => best_block_width(words, rows, cols, dtype.size_in_bytes() * 8, None),
                Some(c) => best_block_width(
                    words,
                    rows,
                    cols,
                    c.bits() as usize,
                    Some(mask.count_kept()),
                ),
            },
        };
        let nbc = cols.div_ceil(bw);
        crate::with_dtype!(dtype, T => {
            let src = data.as_slice::<T>().unwrap_or_default();
            let tasks: Vec<Encoded<T>> = (0..rows.div_ceil(ROWS_PER_TASK))
                .into_par_iter()
                .map(|t| {
                    let r0 = t * ROWS_PER_TASK;
                    encode_rows(src, words, r0..(r0 + ROWS_PER_TASK).min(rows), cols, bw)
                })
                .collect();
            let pruned_rows = tasks
                .iter()
                .map(|t| t.flags.chunks(nbc.max(1)).filter(|f| !f.contains(&true)).count())
                .sum::<usize>();
            let use_remap = nbc > 0
                && match opts.remap {
                    RemapPolicy::Always => true,
                    RemapPolicy::Never => false,
                    RemapPolicy::Auto => {
                        // Bits saved by dropping pruned rows against 32 bits a row of remap.
                        let per_row_bits = nbc + 8 * encoding.params_bytes_per_row();
                        pruned_rows.saturating_mul(per_row_bits) > rows.saturating_mul(32)
                    }
                };
            let stored = if nbc == 0 { 0 } else if use_remap { rows - pruned_rows } else { rows };
            let mut blocks = Mask::zeros([stored, nbc]);
            let mut remap = use_remap.then(|| Vec::with_capacity(rows));
            let mut values = Vec::with_capacity(tasks.iter().map(|t| t.values.len()).sum());
            let mut s = 0usize;
            for task in tasks {
                for row in task.flags.chunks(nbc.max(1)).filter(|_| nbc > 0) {
                    let pruned = !row.contains(&true);
                    if let Some(remap) = remap.as_mut() {
                        if pruned {
                            remap.push(-1i32);
                            continue;
                        }
                        remap.push(i32::try_from(s).map_err(|_| Error::invalid_config("compact table", "remap", rows as f64, "at most 2^31 - 1 stored rows (the remap is int32)"))?);
                    }
                    for (j, &k) in row.iter().enumerate() {
                        if k {
                            blocks.set(s * nbc + j, true);
                        }
                    }
                    s += 1;
                }
                values.extend_from_slice(&task.values);
            }
            let n_values = values.len();
            let info = TableInfo {
                shape: data.shape().to_vec(),
                dtype: dtype.safetensors_name().to_string(),
                encoding,
                rows,
                cols,
                block_width: bw,
                stored_rows: stored,
                values: n_values,
                remap: use_remap,
            };
            let row_start = row_starts(&blocks, stored, cols, bw);
            debug_assert_eq!(row_start[stored], n_values);
            let values = match codec {
                None => Values::Float(TensorData::Copied(Tensor::from_vec(values, [n_values])?)),
                Some(codec) => quantize(codec, &values, &row_start)?,
            };
            let loc = locs_of(&blocks, &row_start, remap.as_deref(), &values, (rows, cols, bw));
            Ok(CompactTable {
                nbc,
                loc,
                info,
                dtype,
                blocks,
                remap: remap.map(Cow::Owned),
                values,
                row_start,
            })
        })
    }
}

/// Each stored row's kept values (`values[row_start[s]..row_start[s + 1]]`) as rowwise codes.
fn quantize<T: Element>(
    codec: RowCodec,
    values: &[T],
    row_start: &[usize],
) -> Result<Values<'static>> {
    let stored = row_start.len() - 1;
    let code_start = code_starts(codec, row_start);
    let chunks: Vec<(Vec<u8>, Vec<RowParams>)> = (0..stored.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|t| {
            let rows = t * ROWS_PER_TASK..((t + 1) * ROWS_PER_TASK).min(stored);
            let base = code_start[rows.start];
            let mut codes = vec![0u8; code_start[rows.end] - base];
            let mut params = Vec::with_capacity(rows.len());
            let mut row = Vec::new();
            for s in rows {
                row.clear();
                row.extend(
                    values[row_start[s]..row_start[s + 1]]
                        .iter()
                        .map(|x| x.to_f64() as f32),
                );
                let c = &mut codes[code_start[s] - base..code_start[s + 1] - base];
                params.push(codec.encode_row(&row, c)?);
            }
            Ok((codes, params))
        })
        .collect::<Result<_>>()?;
    let mut codes = Vec::with_capacity(code_start[stored]);
    let mut params = Vec::with_capacity(stored);
    for (c, p) in chunks {
        codes.extend_from_slice(&c);
        params.extend_from_slice(&p);
    }
    Ok(Values::Quant {
        codec,
        codes: Cow::Owned(codes),
        params,
        code_start,
    })
}

/// Each stored row's first code byte and the total: rows' codes start at byte boundaries.
fn code_starts(codec: RowCodec, row_start: &[usize]) -> Vec<usize> {
    std::iter::once(0)
        .chain(row_start.windows(2).scan(0usize, |at, w| {
            *at += codec.code_bytes(w[1] - w[0]);
            Some(*at)
        }))
        .collect()
}

impl<'a> CompactTable<'a> {
    /// A table from its stored parts, checked against `info` and each other: sizes, dtypes, the
    /// mask's padding bits, the remap's range and order. `name` and `source` name it in errors.
    pub(crate) fn from_parts(
        name: &str,
        info: TableInfo,
        blocks: &[u8],
        remap: Option<&'a [u8]>,
        values: (FileDType, &'a [u8]),
        params: Option<(FileDType, &[u8])>,
    ) -> Result<Self> {
        let bad = |m: String| invalid(name, m);
        let dtype = info
            .file_dtype()
            .ok_or_else(|| bad(format!("dtype {:?} is not a float dtype", info.dtype)))?;
        if info.encoding.float().is_some_and(|d| d != dtype) {
            return Err(bad(format!(
                "encoding {} does not match the table's dtype {}",
                info.encoding, info.dtype
            )));
        }
        if matrix_dims(&info.shape) != (info.rows, info.cols) {
            return Err(bad(format!(
                "rows {} x cols {} do not match the shape {:?}",
                info.rows, info.cols, info.shape
            )));
        }
        crate::tensor::checked_numel(name, &info.shape, dtype.size_in_bytes())?;
        let bw = info.block_width;
        if bw == 0 || bw > info.cols.max(1) {
            return Err(bad(format!(
                "block_width {bw} is outside [1, {}]",
                info.cols.max(1)
            )));
        }
        let nbc = info.blocks_per_row();
        let stored = info.stored_rows;
        let expect_stored = match (nbc, info.remap) {
            (0, _) => stored == 0 && !info.remap,
            (_, true) => stored <= info.rows,
            (_, false) => stored == info.rows,
        };
        if !expect_stored {
            return Err(bad(format!(
                "stored_rows {stored} does not fit {} rows (remap: {})",
                info.rows, info.remap
            )));
        }
        let bits = stored
            .checked_mul(nbc)
            .ok_or_else(|| bad("stored_rows x blocks overflows".into()))?;
        if blocks.len() != bits.div_ceil(8) {
            return Err(bad(format!(
                "the block mask has {} bytes, {} expected for {stored} rows of {nbc} blocks (truncated or tampered?)",
                blocks.len(),
                bits.div_ceil(8)
            )));
        }
        let blocks = Mask::from_packed_bytes([stored, nbc], blocks)
            .map_err(|e| bad(format!("the block mask is invalid: {e}")))?;
        let remap = match (remap, info.remap) {
            (None, false) => None,
            (Some(bytes), true) => Some(check_remap(name, bytes, info.rows, stored)?),
            (None, true) => return Err(bad(format!("{name}@remap is missing"))),
            (Some(_), false) => {
                return Err(bad(format!(
                    "{name}@remap is stored but the metadata says remap: false"
                )))
            }
        };
        let row_start = row_starts(&blocks, stored, info.cols, bw);
        if row_start[stored] != info.values {
            return Err(bad(format!(
                "the block mask keeps {} values, the metadata says {}",
                row_start[stored], info.values
            )));
        }
        let (vdtype, vbytes) = values;
        let code_start = info.encoding.codec().map(|c| code_starts(c, &row_start));
        let want_bytes = match &code_start {
            None => info.values * vdtype.size_in_bytes(),
            Some(c) => c[stored],
        };
        if vdtype != info.encoding.values_dtype() || vbytes.len() != want_bytes {
            return Err(bad(format!(
                "{name}@values is {} bytes of {vdtype}, {} values of {} expected (truncated or tampered?)",
                vbytes.len(),
                info.values,
                info.encoding.values_dtype()
            )));
        }
        let values = match (info.encoding.codec(), params, code_start) {
            (None, None, _) => Values::Float(TensorData::new(dtype, vbytes)?),
            (Some(codec), Some((pdtype, pbytes)), Some(code_start)) => {
                let per = codec.param_bytes();
                if Some(pdtype) != info.encoding.params_dtype()
                    || Some(pbytes.len()) != stored.checked_mul(per)
                {
                    return Err(bad(format!(
                        "{name}@params is {} bytes of {pdtype}, {stored} rows x 2 of {} expected (truncated or tampered?)",
                        pbytes.len(),
                        info.encoding.params_dtype().unwrap_or(FileDType::F32)
                    )));
                }
                let params = pbytes
                    .chunks_exact(per)
                    .enumerate()
                    .map(|(s, b)| {
                        codec.read_params(b).map_err(|e| {
                            bad(format!(
                                "{name}@params row {s}: {e} (the scale must be finite and >= 0)"
                            ))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Values::Quant {
                    codec,
                    codes: Cow::Borrowed(vbytes),
                    params,
                    code_start,
                }
            }
            (None, Some(_), _) => {
                return Err(bad(format!(
                    "{name}@params is stored, but encoding {} has no parameters",
                    info.encoding
                )))
            }
            _ => return Err(bad(format!("{name}@params is missing"))),
        };
        let dims = (info.rows, info.cols, bw);
        let loc = locs_of(&blocks, &row_start, remap.as_deref(), &values, dims);
        Ok(CompactTable {
            nbc,
            loc,
            info,
            dtype,
            blocks,
            remap,
            values,
            row_start,
        })
    }

    /// A copy of the table in memory, its values (or codes) and remap in memory the kernel is
    /// asked to back with transparent huge pages ([`Tensor::with_huge_pages`]): for lookups at
    /// full speed over a table read zero-copy from a file, whose page-cache pages are 4 KiB.
    ///
    /// ```
    /// use data_sparsifier::compact::{CompactOptions, CompactTable};
    /// use data_sparsifier::{Mask, Tensor};
    /// let w = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]).unwrap();
    /// let mask = Mask::from_dense_u8([2, 2], &[1, 0, 0, 1]).unwrap();
    /// let t = CompactTable::encode(w.view(), &mask, &CompactOptions::default()).unwrap();
    /// let copy = t.with_huge_pages();
    /// assert_eq!(copy.to_tensor().unwrap(), t.to_tensor().unwrap());
    /// ```
    pub fn with_huge_pages(&self) -> CompactTable<'static> {
        let values = match &self.values {
            Values::Float(v) => {
                let shape = [v.slice().len()];
                let t = crate::with_dtype!(self.dtype, T => {
                    let data = crate::mem::huge_copy(T::from_slice(v.slice()).unwrap_or_default());
                    Tensor::from_vec(data, shape)
                });
                // The shape is the data's own length: from_vec cannot fail.
                Values::Float(TensorData::Copied(
                    t.unwrap_or_else(|_| Tensor::zeros(self.dtype, [0])),
                ))
            }
            Values::Quant {
                codec,
                codes,
                params,
                code_start,
            } => Values::Quant {
                codec: *codec,
                codes: Cow::Owned(crate::mem::huge_copy(codes)),
                params: params.clone(),
                code_start: code_start.clone(),
            },
        };
        CompactTable {
            info: self.info.clone(),
            dtype: self.dtype,
            blocks: self.blocks.clone(),
            remap: self
                .remap
                .as_deref()
                .map(|r| Cow::Owned(crate::mem::huge_copy(r))),
            values,
            row_start: self.row_start.clone(),
            loc: {
                let mut loc = crate::mem::huge_vec(self.loc.len());
                loc.extend_from_slice(&self.loc);
                loc
            },
            nbc: self.nbc,
        }
    }

    /// The table's description (what the file's metadata holds).
    pub fn info(&self) -> &TableInfo {
        &self.info
    }
    /// The mask of kept blocks: `stored_rows × blocks_per_row`.
    pub fn blocks(&self) -> &Mask {
        &self.blocks
    }
    /// The row remap (`-1` = pruned, else the stored row), if stored.
    pub fn remap(&self) -> Option<&[i32]> {
        self.remap.as_deref()
    }
    /// The table's dtype (of its dense form).
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    /// The stored values as little-endian bytes (`NAME@values`): the values, or the codes.
    pub fn values_bytes(&self) -> &[u8] {
        match &self.values {
            Values::Float(v) => v.slice().as_bytes(),
            Values::Quant { codes, .. } => codes,
        }
    }
    /// The per-row parameters as stored (`NAME@params`: scale then bias, per row), for a
    /// quantized encoding.
    pub fn params_bytes(&self) -> Option<Vec<u8>> {
        let Values::Quant { codec, params, .. } = &self.values else {
            return None;
        };
        let per = codec.param_bytes();
        let mut out = vec![0u8; params.len() * per];
        for (p, o) in params.iter().zip(out.chunks_exact_mut(per)) {
            codec.write_params(*p, o).ok()?;
        }
        Some(out)
    }
    /// The per-row parameters, for a quantized encoding.
    pub fn params(&self) -> Option<&[RowParams]> {
        match &self.values {
            Values::Quant { params, .. } => Some(params),
            Values::Float(_) => None,
        }
    }
    /// The block mask as stored (`NAME@blocks`): bit `i` is bit `i % 8` of byte `i / 8`.
    pub fn blocks_bytes(&self) -> Vec<u8> {
        self.blocks.to_packed_bytes()
    }
    /// The remap as stored (`NAME@remap`), little-endian int32.
    pub fn remap_bytes(&self) -> Option<&[u8]> {
        self.remap.as_deref().map(bytemuck::cast_slice)
    }
    /// Bytes of the stored parts (values, mask, remap, parameters).
    pub fn stored_bytes(&self) -> usize {
        self.values_bytes().len()
            + self
                .info
                .stored_rows
                .saturating_mul(self.info.blocks_per_row())
                .div_ceil(8)
            + self.remap.as_ref().map_or(0, |r| r.len() * 4)
            + self.info.stored_rows * self.info.encoding.params_bytes_per_row()
    }
    /// Whether the values are borrowed from the file (not copied).
    pub fn is_zero_copy(&self) -> bool {
        match &self.values {
            Values::Float(v) => !v.is_copy() && matches!(self.remap, None | Some(Cow::Borrowed(_))),
            Values::Quant { codes, .. } => {
                matches!(codes, Cow::Borrowed(_))
                    && matches!(self.remap, None | Some(Cow::Borrowed(_)))
            }
        }
    }

    /// The stored row of table row `r` (`None`: pruned, or `r` out of range).
    ///
    /// ```
    /// use data_sparsifier::compact::{CompactOptions, CompactTable, RemapPolicy};
    /// use data_sparsifier::{Mask, Tensor};
    /// let w = Tensor::from_vec(vec![1.0f32, 2.0], [2, 1]).unwrap();
    /// let opts = CompactOptions { remap: RemapPolicy::Always, ..Default::default() };
    /// let t = CompactTable::encode(w.view(), &Mask::from_dense_u8([2, 1], &[0, 1]).unwrap(), &opts).unwrap();
    /// assert_eq!((t.stored_row_of(0), t.stored_row_of(1), t.stored_row_of(2)), (None, Some(0), None));
    /// ```
    pub fn stored_row_of(&self, r: usize) -> Option<usize> {
        (r < self.info.rows).then(|| self.stored_row(r)).flatten()
    }

    /// The stored row of table row `r` (`None`: pruned). `r` must be below `rows`.
    #[inline]
    pub(crate) fn stored_row(&self, r: usize) -> Option<usize> {
        match &self.remap {
            Some(m) => usize::try_from(m[r]).ok(),
            None => (r < self.info.stored_rows).then_some(r),
        }
    }

    /// Writes table row `r` (must be below `rows`) into `out` (`cols` cells), zeros where pruned.
    #[inline]
    pub(crate) fn decode_row<T: Element + TypedStorage>(&self, r: usize, out: &mut [T]) {
        out.fill(T::ZERO);
        self.for_each_kept::<T>(r, |c, v| out[c] = v);
    }

    /// The row locators, the stored values and the block width, when the table has locators
    /// (then every row has one) and `T` is its dtype.
    pub(crate) fn fast<T: Element + TypedStorage>(
        &self,
    ) -> Option<(&[RowLoc], Fast<'_, T>, usize)> {
        if self.loc.len() != self.info.rows || T::DTYPE != self.dtype {
            return None;
        }
        let vals = match &self.values {
            Values::Float(v) => Fast::Float(T::from_slice(v.slice())?),
            Values::Quant { codec, codes, .. } => match codec {
                RowCodec::Int8 => Fast::Int8(codes),
                RowCodec::Int4 => Fast::Int4(codes),
                RowCodec::Int2 => Fast::Int2(codes),
            },
        };
        Some((&self.loc, vals, self.info.block_width))
    }

    /// Starts loading table row `r`'s [`RowLoc`] (a hint; nothing without `loc`).
    #[inline(always)]
    pub(crate) fn prefetch_loc(&self, r: usize) {
        crate::simd::prefetch(&self.loc, r);
    }

    /// Starts loading table row `r`'s first values (a hint; nothing without `loc`): up to two
    /// cache lines from its first value.
    #[inline(always)]
    pub(crate) fn prefetch_values(&self, r: usize) {
        let Some(l) = self.loc.get(r) else {
            return;
        };
        let bytes: &[u8] = match &self.values {
            Values::Float(v) => v.slice().as_bytes(),
            Values::Quant { codes, .. } => codes,
        };
        let at = l.at as usize * self.values_item_bytes();
        crate::simd::prefetch(bytes, at);
        crate::simd::prefetch(bytes, at + 64);
    }

    /// Bytes of one `@values` element (a code byte for the quantized encodings).
    #[inline(always)]
    fn values_item_bytes(&self) -> usize {
        match &self.values {
            Values::Float(_) => self.dtype.size_in_bytes(),
            Values::Quant { .. } => 1,
        }
    }

    /// Table row `r`'s stored row `s` (`usize::MAX` where `loc` has the bits), its first value
    /// (quantized: first code byte), its block bits when the table has `loc`, and its
    /// parameters (quantized); `None` for a row pruned entirely.
    #[inline(always)]
    fn locate(&self, r: usize) -> Option<(usize, usize, Option<u32>, RowParams)> {
        if let Some(l) = self.loc.get(r) {
            return (l.bits != 0).then_some((usize::MAX, l.at as usize, Some(l.bits), l.params));
        }
        let s = self.stored_row(r)?;
        Some(match &self.values {
            Values::Quant {
                code_start, params, ..
            } => (s, code_start[s], None, params[s]),
            Values::Float(_) => (s, self.row_start[s], None, RowParams::default()),
        })
    }

    /// Calls `f(j)` for each block `j` that stored row `s` keeps, in order (`bits` from
    /// [`CompactTable::locate`]).
    #[inline(always)]
    fn for_each_block(&self, s: usize, bits: Option<u32>, mut f: impl FnMut(usize)) {
        match bits {
            Some(mut bits) => {
                while bits != 0 {
                    f(bits.trailing_zeros() as usize);
                    bits &= bits - 1;
                }
            }
            None => for_each_set(self.blocks.words(), s * self.nbc, self.nbc, f),
        }
    }

    /// Calls `f(col, value)` for every stored cell of table row `r` (in range), in column order:
    /// the value as the dense table has it (quantized: decoded, rounded to the table's dtype).
    #[inline]
    pub(crate) fn for_each_kept<T: Element + TypedStorage>(
        &self,
        r: usize,
        mut f: impl FnMut(usize, T),
    ) {
        let Some((s, start, bits, p)) = self.locate(r) else {
            return;
        };
        let (bw, cols) = (self.info.block_width, self.info.cols);
        match &self.values {
            Values::Float(v) => {
                let vals: &[T] = T::from_slice(v.slice()).unwrap_or_default();
                let row = &vals[start..];
                let mut p = 0;
                self.for_each_block(s, bits, |j| {
                    let c0 = j * bw;
                    let w = bw.min(cols - c0);
                    for (k, &x) in row[p..p + w].iter().enumerate() {
                        f(c0 + k, x);
                    }
                    p += w;
                });
            }
            Values::Quant { codec, codes, .. } => {
                let row = &codes[start..];
                let mut k = 0;
                let codec = *codec;
                self.for_each_block(s, bits, |j| {
                    let c0 = j * bw;
                    for c in c0..c0 + bw.min(cols - c0) {
                        let code = match codec {
                            RowCodec::Int8 => row[k],
                            RowCodec::Int4 => kernel::packed_code::<4>(row, k),
                            RowCodec::Int2 => kernel::packed_code::<2>(row, k),
                        };
                        f(c, T::from_f64(f64::from(p.decode(code))));
                        k += 1;
                    }
                });
            }
        }
    }

    /// Writes rows `rows` of the dense table into `out` (`rows.len() × cols` cells).
    pub fn expand_rows_into<T: Element + TypedStorage>(
        &self,
        rows: std::ops::Range<usize>,
        out: &mut [T],
    ) -> Result<()> {
        let cols = self.info.cols;
        if T::DTYPE != self.dtype() || rows.end > self.info.rows || out.len() != rows.len() * cols {
            return Err(Error::ShapeMismatch {
                what: format!(
                    "expanding rows {rows:?} of a {} compact table",
                    self.dtype()
                ),
                expected: vec![rows.len(), cols],
                actual: vec![out.len()],
            });
        }
        if cols == 0 {
            return Ok(());
        }
        out.par_chunks_mut(cols)
            .with_min_len(256)
            .zip(rows)
            .for_each(|(o, r)| self.decode_row(r, o));
        Ok(())
    }

    /// The dense table: `mask · data` with the original shape and dtype.
    pub fn to_tensor(&self) -> Result<Tensor> {
        crate::with_dtype!(self.dtype(), T => {
            let mut out = vec![T::ZERO; self.info.rows * self.info.cols];
            self.expand_rows_into::<T>(0..self.info.rows, &mut out)?;
            Tensor::from_vec(out, self.info.shape.clone())
        })
    }
}

/// The remap bytes as int32, checked: `rows` entries, each `-1` or the next stored row (in
/// order), `stored` of them not `-1`.
fn check_remap<'a>(
    name: &str,
    bytes: &'a [u8],
    rows: usize,
    stored: usize,
) -> Result<Cow<'a, [i32]>> {
    if Some(bytes.len()) != rows.checked_mul(4) {
        return Err(invalid(
            name,
            format!(
                "{name}@remap has {} bytes, {rows} int32 entries expected (truncated or tampered?)",
                bytes.len()
            ),
        ));
    }
    let remap: Cow<'a, [i32]> = match bytemuck::try_cast_slice::<u8, i32>(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => Cow::Owned(
            bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
    };
    let mut next = 0i64;
    for (r, &m) in remap.iter().enumerate() {
        if m == -1 {
            continue;
        }
        if i64::from(m) != next || next as usize >= stored {
            return Err(invalid(
                name,
                format!(
                    "{name}@remap[{r}] = {m} is out of range or out of order (expected -1 or {next}, with {stored} stored rows)"
                ),
            ));
        }
        next += 1;
    }
    if next as usize != stored {
        return Err(invalid(
            name,
            format!("{name}@remap maps {next} rows, the table stores {stored}"),
        ));
    }
    Ok(remap)
}
