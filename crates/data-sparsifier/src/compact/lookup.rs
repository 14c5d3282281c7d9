//! `Embedding` and `EmbeddingBag` straight over a [`CompactTable`], through the dense modules'
//! own code (`embedding::lookup_rows`, `embedding::bag_forward`) with the compact table as its
//! [`RowSource`]: the bag reduction adds each row's kept blocks through the kernels of
//! `kernel.rs` (chosen once per forward by [`with_rows!`]), `max` mode and `Embedding` decode a
//! row into a scratch row. Each cell is added as the dense bag adds it, so results equal the
//! dense forward over the expanded table bit for bit.

use super::kernel::{add_row_any, add_row_fixed, Codes, FloatCodes, Int8Codes, PackedCodes};
use super::table::{CompactTable, Fast, RowLoc};
use crate::dtype::Element;
use crate::embedding::{
    add_all, bag_forward, bag_forward_into, lookup_rows, normalize_padding, table_dims, BagMode,
    Bags, RowSource,
};
use crate::error::Result;
use crate::tensor::{Tensor, TypedStorage};

/// A compact table's rows through its general path (tables without row locators: more than 32
/// blocks a row, a narrower last block, 2^32 values or more).
struct CompactRows<'t, 'a> {
    table: &'t CompactTable<'a>,
}

/// Row `r` of `table`, decoded into `scratch` (what `max` mode and `Embedding` read).
#[inline(always)]
fn decoded_row<'s, T: Element + TypedStorage>(
    table: &CompactTable<'_>,
    r: usize,
    scratch: &'s mut [T],
) -> &'s [T] {
    table.decode_row(r, scratch);
    scratch
}

/// The compact sources add the kept cells only, the others being +0.0 (see [`RowSource`]),
/// unless a weight is not finite (0 · inf is NaN): then this adds the whole decoded row, as the
/// dense table's would be, and returns true.
#[inline(always)]
fn added_non_finite<T: Element + TypedStorage>(
    table: &CompactTable<'_>,
    r: usize,
    acc: &mut [T::Acc],
    w: Option<T::Acc>,
    scratch: &mut [T],
) -> bool {
    if !w.is_some_and(|w| !T::acc_to_f64(w).is_finite()) {
        return false;
    }
    table.decode_row(r, scratch);
    add_all(acc, scratch, w);
    true
}

impl<T: Element + TypedStorage> RowSource<T> for CompactRows<'_, '_> {
    #[inline(always)]
    fn row<'s>(&'s self, r: usize, scratch: &'s mut [T]) -> &'s [T] {
        decoded_row(self.table, r, scratch)
    }
    #[inline(always)]
    fn add_row(&self, r: usize, acc: &mut [T::Acc], w: Option<T::Acc>, scratch: &mut [T]) {
        if !added_non_finite(self.table, r, acc, w, scratch) {
            self.table.for_each_kept::<T>(r, |c, x| {
                let v = x.to_acc();
                acc[c] = acc[c] + w.map_or(v, |w| v * w);
            });
        }
    }
    #[inline(always)]
    fn prefetch_far(&self, r: usize) {
        self.table.prefetch_loc(r);
    }
    #[inline(always)]
    fn prefetch_near(&self, r: usize) {
        self.table.prefetch_values(r);
    }
}

/// A compact table's rows through the kernels monomorphized for one encoding (`C`) and one block
/// width (`BW`; 0: the width `bw`, known only at run time), chosen once per forward by
/// [`with_rows!`]; every row has a locator.
struct FastRows<'t, 'a, C, const BW: usize> {
    table: &'t CompactTable<'a>,
    loc: &'t [RowLoc],
    codes: C,
    bw: usize,
}

impl<T: Element + TypedStorage, C: Codes<T>, const BW: usize> RowSource<T>
    for FastRows<'_, '_, C, BW>
{
    #[inline(always)]
    fn row<'s>(&'s self, r: usize, scratch: &'s mut [T]) -> &'s [T] {
        decoded_row(self.table, r, scratch)
    }
    #[inline(always)]
    fn add_row(&self, r: usize, acc: &mut [T::Acc], w: Option<T::Acc>, scratch: &mut [T]) {
        if added_non_finite(self.table, r, acc, w, scratch) {
            return;
        }
        let Some(l) = self.loc.get(r) else {
            return;
        };
        let row = (l.at as usize, l.bits, l.params);
        if BW == 0 {
            add_row_any::<T, C>(self.bw, self.codes, row, acc, w);
        } else {
            add_row_fixed::<T, C, BW>(self.codes, row, acc, w);
        }
    }
    #[inline(always)]
    fn prefetch_far(&self, r: usize) {
        crate::simd::prefetch(self.loc, r);
    }
    #[inline(always)]
    fn prefetch_near(&self, r: usize) {
        self.table.prefetch_values(r);
    }
}

/// Runs `$body` with `$src` the table's fastest [`RowSource`] for element type `$T`: a
/// [`FastRows`] (its own kernel for the common block widths, the run-time width for the others),
/// or [`CompactRows`] for a table without row locators.
macro_rules! with_rows {
    ($table:expr, $T:ty, $src:ident => $body:expr) => {{
        let table = $table;
        macro_rules! fast {
            ($loc:expr, $codes:expr, $bw:expr) => {{
                let (loc, codes, bw) = ($loc, $codes, $bw);
                macro_rules! width {
                    ($w:literal) => {{
                        let $src = FastRows::<_, $w> {
                            table,
                            loc,
                            codes,
                            bw,
                        };
                        $body
                    }};
                }
                match bw {
                    4 => width!(4),
                    8 => width!(8),
                    16 => width!(16),
                    _ => width!(0),
                }
            }};
        }
        match table.fast::<$T>() {
            Some((loc, Fast::Float(v), bw)) => fast!(loc, FloatCodes::<$T>(v), bw),
            Some((loc, Fast::Int8(c), bw)) => fast!(loc, Int8Codes(c), bw),
            Some((loc, Fast::Int4(c), bw)) => fast!(loc, PackedCodes::<4>(c), bw),
            Some((loc, Fast::Int2(c), bw)) => fast!(loc, PackedCodes::<2>(c), bw),
            None => {
                let $src = CompactRows { table };
                $body
            }
        }
    }};
}

/// `torch.nn.Embedding` over a compact table, without expanding it: [`Embedding`](crate::Embedding)'s
/// forward, the same output.
///
/// ```
/// use data_sparsifier::compact::{CompactEmbedding, CompactOptions, CompactTable};
/// use data_sparsifier::{Embedding, Mask, Tensor};
/// let w = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]).unwrap();
/// let mask = Mask::from_dense_u8([2, 2], &[0, 1, 0, 0]).unwrap();
/// let t = CompactTable::encode(w.view(), &mask, &CompactOptions::default()).unwrap();
/// let emb = CompactEmbedding::new(&t, None).unwrap();
/// assert_eq!(emb.forward(&[1, 0]).unwrap().to_f64_vec(), vec![0.0, 0.0, 0.0, 2.0]);
/// let dense = Embedding::from_weight(t.to_tensor().unwrap()).unwrap();
/// assert_eq!(emb.forward(&[0, 1]).unwrap(), dense.forward(&[0, 1]).unwrap());
/// assert!(emb.forward(&[2]).is_err()); // out of range: an error, never a panic
/// ```
#[derive(Debug, Clone, Copy)]
pub struct CompactEmbedding<'t, 'a> {
    table: &'t CompactTable<'a>,
    padding_idx: Option<usize>,
}

impl<'t, 'a> CompactEmbedding<'t, 'a> {
    /// A lookup over `table` (2-D); `padding_idx` as PyTorch's (only recorded: the table holds
    /// whatever row it was given).
    pub fn new(table: &'t CompactTable<'a>, padding_idx: Option<i64>) -> Result<Self> {
        let (n, _) = table_dims("Embedding", &table.info().shape)?;
        Ok(CompactEmbedding {
            table,
            padding_idx: normalize_padding("Embedding", padding_idx, n)?,
        })
    }
    /// The padding row, if any.
    pub fn padding_idx(&self) -> Option<usize> {
        self.padding_idx
    }
    /// The rows of `indices`, shape `[indices.len(), embedding_dim]`, the table's dtype.
    pub fn forward(&self, indices: &[i64]) -> Result<Tensor> {
        let (n, d) = (self.table.info().rows, self.table.info().cols);
        crate::with_dtype!(self.table.dtype(), T => {
            let src = CompactRows { table: self.table };
            lookup_rows::<T, _>("Embedding", &src, n, d, indices)
        })
    }
}

/// `torch.nn.EmbeddingBag` over a compact table, without expanding it: sum, mean and max,
/// offsets, `include_last_offset`, `per_sample_weights`, `padding_idx` and empty bags exactly as
/// [`EmbeddingBag`](crate::EmbeddingBag) (the same reduction code), the same output.
///
/// ```
/// use data_sparsifier::compact::{CompactEmbeddingBag, CompactOptions, CompactTable};
/// use data_sparsifier::embedding::{BagMode, Bags};
/// use data_sparsifier::{EmbeddingBag, Mask, Tensor};
/// let w = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [3, 2]).unwrap();
/// let mask = Mask::from_dense_u8([3, 2], &[1, 1, 0, 0, 1, 1]).unwrap();
/// let t = CompactTable::encode(w.view(), &mask, &CompactOptions::default()).unwrap();
/// let bag = CompactEmbeddingBag::new(&t, BagMode::Sum, None).unwrap();
/// let bags = Bags::Offsets { offsets: &[0, 2, 3], include_last_offset: false };
/// let out = bag.forward(&[0, 2, 1], bags, None).unwrap();
/// assert_eq!(out.to_f64_vec(), vec![6.0, 8.0, 0.0, 0.0, 0.0, 0.0]); // {0, 2}, {1}, {} (empty)
/// let dense = EmbeddingBag::from_weight(t.to_tensor().unwrap(), BagMode::Sum).unwrap();
/// assert_eq!(out, dense.forward(&[0, 2, 1], bags, None).unwrap());
/// assert!(bag.forward(&[3], Bags::Fixed { bag_size: 1 }, None).is_err());
/// ```
#[derive(Debug, Clone, Copy)]
pub struct CompactEmbeddingBag<'t, 'a> {
    table: &'t CompactTable<'a>,
    mode: BagMode,
    padding_idx: Option<usize>,
}

impl<'t, 'a> CompactEmbeddingBag<'t, 'a> {
    /// A bag lookup over `table` (2-D) reducing by `mode`, skipping `padding_idx` (negative
    /// counts from the end).
    pub fn new(
        table: &'t CompactTable<'a>,
        mode: BagMode,
        padding_idx: Option<i64>,
    ) -> Result<Self> {
        let (n, _) = table_dims("EmbeddingBag", &table.info().shape)?;
        Ok(CompactEmbeddingBag {
            table,
            mode,
            padding_idx: normalize_padding("EmbeddingBag", padding_idx, n)?,
        })
    }
    /// The reduction mode.
    pub fn mode(&self) -> BagMode {
        self.mode
    }
    /// The padding row, if any.
    pub fn padding_idx(&self) -> Option<usize> {
        self.padding_idx
    }
    /// Reduces each bag: shape `[num_bags, embedding_dim]`, the table's dtype (half precision
    /// accumulates in f32).
    pub fn forward(
        &self,
        indices: &[i64],
        bags: Bags<'_>,
        per_sample_weights: Option<&[f64]>,
    ) -> Result<Tensor> {
        let (n, d) = (self.table.info().rows, self.table.info().cols);
        crate::with_dtype!(self.table.dtype(), T => {
            with_rows!(self.table, T, src => bag_forward::<T, _>(&src, n, d, self.mode, self.padding_idx, indices, bags, per_sample_weights))
        })
    }
    /// [`forward`](Self::forward) into `out`, reusing its buffer when it already has the
    /// output's dtype and shape ([`EmbeddingBag::forward_into`](crate::EmbeddingBag::forward_into)).
    pub fn forward_into(
        &self,
        indices: &[i64],
        bags: Bags<'_>,
        per_sample_weights: Option<&[f64]>,
        out: &mut Tensor,
    ) -> Result<()> {
        let (n, d) = (self.table.info().rows, self.table.info().cols);
        crate::with_dtype!(self.table.dtype(), T => {
            with_rows!(self.table, T, src => bag_forward_into::<T, _>(&src, n, d, self.mode, self.padding_idx, indices, bags, per_sample_weights, out))
        })
    }
}
