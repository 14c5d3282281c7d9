//! Embedding lookup modules with PyTorch's forward semantics, holding their weight through a shared
//! [`Parameter`], so a sparsifier squash is seen by the next `forward`.

use serde::{Deserialize, Serialize};

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::random::randn;
use crate::tensor::{checked_numel, Parameter, Tensor, TypedStorage};

fn table_shape(module: &'static str, weight: &Parameter) -> Result<(usize, usize)> {
    table_dims(module, &weight.shape())
}

/// `(num_embeddings, embedding_dim)` of a table shape.
pub(crate) fn table_dims(module: &'static str, shape: &[usize]) -> Result<(usize, usize)> {
    match *shape {
        [n, d] => Ok((n, d)),
        ref other => Err(Error::InvalidLookup {
            module,
            message: format!(
                "weight must be 2-D (num_embeddings, embedding_dim), got shape {other:?}"
            ),
        }),
    }
}

pub(crate) fn normalize_padding(
    module: &'static str,
    padding_idx: Option<i64>,
    n: usize,
) -> Result<Option<usize>> {
    match padding_idx {
        None => Ok(None),
        Some(p) => {
            let idx = if p < 0 { p + n as i64 } else { p };
            if idx < 0 || idx >= n as i64 {
                return Err(Error::InvalidLookup {
                    module,
                    message: format!("padding_idx {p} must be within [-{n}, {n})"),
                });
            }
            Ok(Some(idx as usize))
        }
    }
}

pub(crate) fn check_index(
    module: &'static str,
    idx: i64,
    position: usize,
    n: usize,
) -> Result<usize> {
    if idx < 0 || idx as u64 >= n as u64 {
        return Err(Error::IndexOutOfRange {
            module,
            index: idx,
            position,
            num_embeddings: n,
        });
    }
    Ok(idx as usize)
}

/// A lookup table, like `torch.nn.Embedding`.
///
/// `forward(indices)` returns the rows of the weight, shape `[indices.len(), embedding_dim]`.
/// As in PyTorch, the `padding_idx` row is zeroed when the table is created with [`Embedding::new`].
///
/// ```
/// use data_sparsifier::{DType, Embedding, Tensor};
/// let w = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [3, 2]).unwrap();
/// let emb = Embedding::from_weight(w).unwrap();
/// let out = emb.forward(&[2, 0]).unwrap();
/// assert_eq!(out.as_slice::<f32>().unwrap(), &[5.0, 6.0, 1.0, 2.0]);
/// assert!(emb.forward(&[3]).is_err()); // out of range is an error, not a panic
/// ```
#[derive(Debug, Clone)]
pub struct Embedding {
    weight: Parameter,
    padding_idx: Option<usize>,
}

impl Embedding {
    /// A new table with N(0, 1) weights from `seed`; the `padding_idx` row (negative counts from the
    /// end) is zero.
    ///
    /// ```
    /// use data_sparsifier::{DType, Embedding};
    /// let emb = Embedding::new(10, 4, DType::F32, Some(-1), 42).unwrap();
    /// assert_eq!((emb.dims().unwrap(), emb.padding_idx()), ((10, 4), Some(9)));
    /// assert_eq!(emb.forward(&[9]).unwrap().to_f64_vec(), vec![0.0; 4]); // the padding row
    /// assert!(Embedding::new(10, 4, DType::F32, Some(10), 42).is_err());
    /// ```
    pub fn new(
        num_embeddings: usize,
        embedding_dim: usize,
        dtype: DType,
        padding_idx: Option<i64>,
        seed: u64,
    ) -> Result<Self> {
        let padding = normalize_padding("Embedding", padding_idx, num_embeddings)?;
        checked_numel(
            "Embedding table",
            &[num_embeddings, embedding_dim],
            dtype.size_in_bytes(),
        )?;
        let mut w = randn([num_embeddings, embedding_dim], dtype, seed);
        if let Some(p) = padding {
            zero_row(&mut w, p, embedding_dim);
        }
        Ok(Embedding {
            weight: Parameter::new(w),
            padding_idx: padding,
        })
    }
    /// A table over an existing weight (like `from_pretrained`); the weight is not modified.
    ///
    /// ```
    /// use data_sparsifier::{DType, Embedding, Tensor};
    /// let emb = Embedding::from_weight(Tensor::zeros(DType::F16, [5, 3])).unwrap();
    /// assert_eq!((emb.dims().unwrap(), emb.padding_idx()), ((5, 3), None));
    /// assert!(Embedding::from_weight(Tensor::zeros(DType::F16, [15])).is_err()); // not 2-D
    /// ```
    pub fn from_weight(weight: impl Into<Parameter>) -> Result<Self> {
        Self::from_parameter(weight.into(), None)
    }
    /// A table over a shared weight handle, with an optional padding index.
    ///
    /// ```
    /// use data_sparsifier::{Embedding, Parameter, Tensor};
    /// let w = Parameter::new(Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]).unwrap());
    /// let emb = Embedding::from_parameter(w.clone(), Some(0)).unwrap();
    /// assert!(emb.weight().ptr_eq(&w));
    /// assert_eq!(emb.padding_idx(), Some(0));
    /// assert_eq!(w.read().to_f64_vec(), vec![1.0, 2.0, 3.0, 4.0]); // the padding row is not zeroed
    /// ```
    pub fn from_parameter(weight: Parameter, padding_idx: Option<i64>) -> Result<Self> {
        let (n, _) = table_shape("Embedding", &weight)?;
        let padding_idx = normalize_padding("Embedding", padding_idx, n)?;
        Ok(Embedding {
            weight,
            padding_idx,
        })
    }
    /// The shared weight handle.
    pub fn weight(&self) -> &Parameter {
        &self.weight
    }
    /// The padding row, if any.
    pub fn padding_idx(&self) -> Option<usize> {
        self.padding_idx
    }
    /// `(num_embeddings, embedding_dim)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        table_shape("Embedding", &self.weight)
    }
    /// Looks up each index; the output has shape `[indices.len(), embedding_dim]` and the weight's dtype.
    ///
    /// ```
    /// use data_sparsifier::{Embedding, Mask, Parameter, Tensor};
    /// let w = Parameter::new(Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]).unwrap());
    /// let emb = Embedding::from_parameter(w.clone(), None).unwrap();
    /// w.write().apply_mask(&Mask::from_dense_u8([2, 2], &[1, 1, 0, 1]).unwrap()).unwrap();
    /// let out = emb.forward(&[1, 1, 0]).unwrap(); // sees the change to the shared weight
    /// assert_eq!(out.shape(), &[3, 2]);
    /// assert_eq!(out.to_f64_vec(), vec![0.0, 4.0, 0.0, 4.0, 1.0, 2.0]);
    /// assert!(emb.forward(&[-1]).is_err());
    /// ```
    pub fn forward(&self, indices: &[i64]) -> Result<Tensor> {
        // One read guard for the dimensions and the rows: another holder may replace the table.
        let w = self.weight.read();
        let (n, d) = table_dims("Embedding", w.shape())?;
        crate::with_dtype!(w.dtype(), T => {
            let src = DenseRows { src: w.as_slice::<T>().unwrap_or_default(), d };
            lookup_rows::<T, _>("Embedding", &src, n, d, indices)
        })
    }
}

/// The rows of a table, as the lookups read them: borrowed from a dense table, or decoded (a
/// compact table) into a scratch row.
pub(crate) trait RowSource<T: Element> {
    /// Row `r` (in range) of `d` cells: borrowed, or written into `scratch` (`d` cells).
    fn row<'s>(&'s self, r: usize, scratch: &'s mut [T]) -> &'s [T];
    /// Adds row `r` (each cell times `w`, if given) into `acc`, as the sum and mean reductions
    /// do. A source may skip cells it knows to be +0.0 when `w` is finite: an accumulator that
    /// starts at +0.0 is never -0.0, so adding ±0.0 leaves it as it is, bit for bit.
    #[inline(always)]
    fn add_row(&self, r: usize, acc: &mut [T::Acc], w: Option<T::Acc>, scratch: &mut [T]) {
        add_all(acc, self.row(r, scratch), w);
    }
    /// Starts loading what row `r` (in range) needs first, [`PREFETCH_FAR`] indices ahead.
    #[inline(always)]
    fn prefetch_far(&self, _r: usize) {}
    /// Starts loading row `r`'s values (in range), [`PREFETCH_NEAR`] indices ahead.
    #[inline(always)]
    fn prefetch_near(&self, _r: usize) {}
}

/// How many indices ahead the bag reduction prefetches what a row needs first (a compact
/// table's row locator).
pub(crate) const PREFETCH_FAR: usize = 16;
/// How many indices ahead the bag reduction prefetches a row's values.
pub(crate) const PREFETCH_NEAR: usize = 8;

/// Adds every cell of `row` (times `w`, if given) into `acc`.
#[inline(always)]
pub(crate) fn add_all<T: Element>(acc: &mut [T::Acc], row: &[T], w: Option<T::Acc>) {
    // `row` cut to the accumulator's length, so that both lengths are the one the compiler
    // may know (a fixed-size accumulator), and the loop has no bounds checks.
    let row = &row[..acc.len().min(row.len())];
    match w {
        None => {
            for (a, &x) in acc.iter_mut().zip(row) {
                *a = *a + x.to_acc();
            }
        }
        Some(w) => {
            for (a, &x) in acc.iter_mut().zip(row) {
                *a = *a + x.to_acc() * w;
            }
        }
    }
}

/// A dense row-major table.
pub(crate) struct DenseRows<'a, T> {
    pub(crate) src: &'a [T],
    pub(crate) d: usize,
}

impl<T: Element> RowSource<T> for DenseRows<'_, T> {
    #[inline(always)]
    fn row<'s>(&'s self, r: usize, _scratch: &'s mut [T]) -> &'s [T] {
        &self.src[r * self.d..(r + 1) * self.d]
    }
    #[inline(always)]
    fn prefetch_near(&self, r: usize) {
        // The row's first cache line: the CPU's own prefetcher brings the next ones (asking for
        // every line costs more on cached tables than it saves on cold ones, measured here).
        crate::simd::prefetch(self.src, r * self.d);
    }
}

/// `Embedding`'s forward over any table of `n` rows of `d` cells: the rows of `indices`
/// (checked), shape `[indices.len(), d]`.
pub(crate) fn lookup_rows<T: Element + TypedStorage, R: RowSource<T>>(
    module: &'static str,
    src: &R,
    n: usize,
    d: usize,
    indices: &[i64],
) -> Result<Tensor> {
    let rows: Vec<usize> = indices
        .iter()
        .enumerate()
        .map(|(pos, &i)| check_index(module, i, pos, n))
        .collect::<Result<_>>()?;
    let mut scratch = vec![T::ZERO; d];
    let mut out = Vec::with_capacity(rows.len() * d);
    for r in rows {
        out.extend_from_slice(src.row(r, &mut scratch));
    }
    Tensor::from_vec(out, [indices.len(), d])
}

fn zero_row(w: &mut Tensor, row: usize, d: usize) {
    crate::with_dtype!(w.dtype(), T => {
        if let Some(s) = w.as_slice_mut::<T>() {
            s[row * d..(row + 1) * d].iter_mut().for_each(|x| *x = T::ZERO);
        }
    })
}

/// How an [`EmbeddingBag`] reduces the rows of a bag.
///
/// ```
/// use data_sparsifier::{embedding::BagMode, embedding::Bags, EmbeddingBag, Tensor};
/// let w = Tensor::from_vec(vec![1.0f32, 4.0, 3.0, 2.0], [2, 2]).unwrap();
/// let reduce = |mode| {
///     let bag = EmbeddingBag::from_weight(w.clone(), mode).unwrap();
///     bag.forward(&[0, 1], Bags::Fixed { bag_size: 2 }, None).unwrap().to_f64_vec()
/// };
/// assert_eq!(reduce(BagMode::Sum), vec![4.0, 6.0]);
/// assert_eq!(reduce(BagMode::Mean), vec![2.0, 3.0]);
/// assert_eq!(reduce(BagMode::Max), vec![3.0, 4.0]);
/// assert_eq!(BagMode::default(), BagMode::Mean);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BagMode {
    /// Sum of the rows (optionally weighted by `per_sample_weights`).
    Sum,
    /// Mean of the rows (PyTorch's default).
    #[default]
    Mean,
    /// Element-wise maximum of the rows.
    Max,
}

/// The bags of one [`EmbeddingBag::forward`] call, as PyTorch takes them.
///
/// ```
/// use data_sparsifier::{embedding::BagMode, embedding::Bags, EmbeddingBag, Tensor};
/// let w = Tensor::from_vec(vec![1.0f32, 2.0, 4.0], [3, 1]).unwrap();
/// let bag = EmbeddingBag::from_weight(w, BagMode::Sum).unwrap();
/// let idx = [0, 1, 2, 2];
/// // Two bags of two: {0, 1} and {2, 2}.
/// let fixed = bag.forward(&idx, Bags::Fixed { bag_size: 2 }, None).unwrap();
/// // The same bags by offsets, CSR style (a last offset equal to the number of indices).
/// let csr = Bags::Offsets { offsets: &[0, 2, 4], include_last_offset: true };
/// assert_eq!(bag.forward(&idx, csr, None).unwrap(), fixed);
/// assert_eq!(fixed.to_f64_vec(), vec![3.0, 8.0]);
/// ```
#[derive(Debug, Clone, Copy)]
pub enum Bags<'a> {
    /// Fixed-size bags: `indices` is a row-major `(batch, bag_size)` matrix (PyTorch's 2-D input).
    Fixed {
        /// Entries per bag.
        bag_size: usize,
    },
    /// Variable bags: `indices` is 1-D and bag `b` starts at `offsets[b]` (PyTorch's 1-D input).
    Offsets {
        /// Start of each bag; `offsets[0]` must be 0 and the values non-decreasing.
        offsets: &'a [i64],
        /// If true, `offsets` has one extra last entry equal to `indices.len()` (CSR style).
        include_last_offset: bool,
    },
}

/// A table that reduces bags of rows, like `torch.nn.EmbeddingBag`.
///
/// Semantics follow PyTorch: `sum`, `mean` and `max` modes; bags given by `offsets` (with
/// `include_last_offset`) or as a fixed-size 2-D input; `per_sample_weights` only in `sum` mode;
/// entries equal to `padding_idx` are skipped (and not counted by `mean`); an empty bag gives zeros.
/// Half-precision tables accumulate in f32.
///
/// ```
/// use data_sparsifier::{embedding::BagMode, embedding::Bags, EmbeddingBag, Tensor};
/// let w = Tensor::from_vec(vec![1.0f32, 1.0, 2.0, 2.0, 4.0, 4.0], [3, 2]).unwrap();
/// let bag = EmbeddingBag::from_weight(w, BagMode::Mean).unwrap();
/// let out = bag
///     .forward(&[0, 1, 2], Bags::Offsets { offsets: &[0, 2, 3], include_last_offset: false }, None)
///     .unwrap();
/// // bags: {0, 1} -> mean 1.5; {2} -> 4; {} (empty) -> 0
/// assert_eq!(out.as_slice::<f32>().unwrap(), &[1.5, 1.5, 4.0, 4.0, 0.0, 0.0]);
/// ```
#[derive(Debug, Clone)]
pub struct EmbeddingBag {
    weight: Parameter,
    mode: BagMode,
    padding_idx: Option<usize>,
}

impl EmbeddingBag {
    /// A new table with N(0, 1) weights from `seed`; the `padding_idx` row is zero.
    ///
    /// ```
    /// use data_sparsifier::{embedding::BagMode, embedding::Bags, DType, EmbeddingBag};
    /// let bag = EmbeddingBag::new(6, 3, DType::BF16, BagMode::Sum, Some(0), 7).unwrap();
    /// assert_eq!((bag.dims().unwrap(), bag.mode(), bag.padding_idx()), ((6, 3), BagMode::Sum, Some(0)));
    /// assert_eq!(bag.weight().dtype(), DType::BF16);
    /// // Only the padding row in the bag: it is skipped, so the bag is empty.
    /// let out = bag.forward(&[0], Bags::Fixed { bag_size: 1 }, None).unwrap();
    /// assert_eq!(out.to_f64_vec(), vec![0.0; 3]);
    /// ```
    pub fn new(
        num_embeddings: usize,
        embedding_dim: usize,
        dtype: DType,
        mode: BagMode,
        padding_idx: Option<i64>,
        seed: u64,
    ) -> Result<Self> {
        let padding = normalize_padding("EmbeddingBag", padding_idx, num_embeddings)?;
        checked_numel(
            "EmbeddingBag table",
            &[num_embeddings, embedding_dim],
            dtype.size_in_bytes(),
        )?;
        let mut w = randn([num_embeddings, embedding_dim], dtype, seed);
        if let Some(p) = padding {
            zero_row(&mut w, p, embedding_dim);
        }
        Ok(EmbeddingBag {
            weight: Parameter::new(w),
            mode,
            padding_idx: padding,
        })
    }
    /// A table over an existing weight.
    ///
    /// ```
    /// use data_sparsifier::{embedding::BagMode, DType, EmbeddingBag, Tensor};
    /// let bag = EmbeddingBag::from_weight(Tensor::zeros(DType::F32, [4, 2]), BagMode::Max).unwrap();
    /// assert_eq!((bag.dims().unwrap(), bag.mode()), ((4, 2), BagMode::Max));
    /// assert!(EmbeddingBag::from_weight(Tensor::zeros(DType::F32, [8]), BagMode::Max).is_err());
    /// ```
    pub fn from_weight(weight: impl Into<Parameter>, mode: BagMode) -> Result<Self> {
        Self::from_parameter(weight.into(), mode, None)
    }
    /// A table over a shared weight handle.
    ///
    /// ```
    /// use data_sparsifier::{embedding::BagMode, embedding::Bags, EmbeddingBag, Parameter, Tensor};
    /// let w = Parameter::new(Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3, 1]).unwrap());
    /// let bag = EmbeddingBag::from_parameter(w.clone(), BagMode::Mean, Some(2)).unwrap();
    /// assert!(bag.weight().ptr_eq(&w));
    /// // The padding row 2 is skipped and not counted by the mean.
    /// let out = bag.forward(&[0, 1, 2], Bags::Fixed { bag_size: 3 }, None).unwrap();
    /// assert_eq!(out.to_f64_vec(), vec![1.5]);
    /// ```
    pub fn from_parameter(
        weight: Parameter,
        mode: BagMode,
        padding_idx: Option<i64>,
    ) -> Result<Self> {
        let (n, _) = table_shape("EmbeddingBag", &weight)?;
        let padding_idx = normalize_padding("EmbeddingBag", padding_idx, n)?;
        Ok(EmbeddingBag {
            weight,
            mode,
            padding_idx,
        })
    }
    /// The shared weight handle.
    pub fn weight(&self) -> &Parameter {
        &self.weight
    }
    /// The reduction mode.
    pub fn mode(&self) -> BagMode {
        self.mode
    }
    /// The padding row, if any.
    pub fn padding_idx(&self) -> Option<usize> {
        self.padding_idx
    }
    /// `(num_embeddings, embedding_dim)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        table_shape("EmbeddingBag", &self.weight)
    }
}

/// Bag boundaries as `(start, end)` ranges into `n_idx` indices, checked (shared with the candle
/// `EmbeddingBag`).
pub(crate) fn bag_ranges(n_idx: usize, bags: Bags<'_>) -> Result<Vec<(usize, usize)>> {
    {
        let err = |message: String| Error::InvalidLookup {
            module: "EmbeddingBag",
            message,
        };
        match bags {
            Bags::Fixed { bag_size } => {
                if bag_size == 0 {
                    return Err(err("bag_size must be positive for a 2-D input".into()));
                }
                if n_idx % bag_size != 0 {
                    return Err(err(format!(
                        "{n_idx} indices do not form whole bags of {bag_size}"
                    )));
                }
                Ok((0..n_idx / bag_size)
                    .map(|b| (b * bag_size, (b + 1) * bag_size))
                    .collect())
            }
            Bags::Offsets {
                offsets,
                include_last_offset,
            } => {
                if offsets.is_empty() {
                    return Err(err("offsets must not be empty".into()));
                }
                if offsets[0] != 0 {
                    return Err(err(format!("offsets[0] must be 0, got {}", offsets[0])));
                }
                let mut starts = Vec::with_capacity(offsets.len());
                for (i, &o) in offsets.iter().enumerate() {
                    if o < 0 || o as u64 > n_idx as u64 {
                        return Err(err(format!(
                            "offsets[{i}] = {o} is outside [0, {n_idx}] (the number of indices)"
                        )));
                    }
                    if i > 0 && o < offsets[i - 1] {
                        return Err(err(format!(
                            "offsets must be non-decreasing: offsets[{i}] = {o} < offsets[{}] = {}",
                            i - 1,
                            offsets[i - 1]
                        )));
                    }
                    starts.push(o as usize);
                }
                let nbags = if include_last_offset {
                    if *starts.last().unwrap_or(&0) != n_idx {
                        // PyTorch ignores indices past the last offset; we refuse, as it hides bugs.
                        return Err(err(format!(
                            "with include_last_offset the last offset must equal the number of indices ({n_idx}), got {}",
                            starts.last().unwrap_or(&0)
                        )));
                    }
                    starts.len() - 1
                } else {
                    starts.len()
                };
                Ok((0..nbags)
                    .map(|b| (starts[b], starts.get(b + 1).copied().unwrap_or(n_idx)))
                    .collect())
            }
        }
    }
}

impl EmbeddingBag {
    /// Reduces each bag; the output has shape `[num_bags, embedding_dim]` and the weight's dtype.
    ///
    /// ```
    /// use data_sparsifier::{embedding::BagMode, embedding::Bags, EmbeddingBag, Tensor};
    /// let w = Tensor::from_vec(vec![1.0f32, 10.0, 100.0], [3, 1]).unwrap();
    /// let bag = EmbeddingBag::from_weight(w, BagMode::Sum).unwrap();
    /// let bags = Bags::Offsets { offsets: &[0, 1], include_last_offset: false };
    /// // per_sample_weights scale each looked-up row (sum mode only).
    /// let out = bag.forward(&[0, 1, 2], bags, Some(&[2.0, 1.0, 0.5])).unwrap();
    /// assert_eq!(out.shape(), &[2, 1]);
    /// assert_eq!(out.to_f64_vec(), vec![2.0, 60.0]);
    /// assert!(bag.forward(&[3], Bags::Fixed { bag_size: 1 }, None).is_err()); // out of range
    /// ```
    pub fn forward(
        &self,
        indices: &[i64],
        bags: Bags<'_>,
        per_sample_weights: Option<&[f64]>,
    ) -> Result<Tensor> {
        // One read guard for the dimensions and the rows: another holder may replace the table.
        let w = self.weight.read();
        let (n, d) = table_dims("EmbeddingBag", w.shape())?;
        crate::with_dtype!(w.dtype(), T => {
            let src = DenseRows { src: w.as_slice::<T>().unwrap_or_default(), d };
            bag_forward::<T, _>(&src, n, d, self.mode, self.padding_idx, indices, bags, per_sample_weights)
        })
    }
    /// [`forward`](Self::forward) into `out`, whose buffer is reused when it already has the
    /// output's dtype and shape (as after the previous call on a batch of the same size), else
    /// replaced: an inference loop then allocates nothing per batch.
    ///
    /// ```
    /// use data_sparsifier::{embedding::BagMode, embedding::Bags, EmbeddingBag, Tensor};
    /// let w = Tensor::from_vec(vec![1.0f32, 10.0, 100.0], [3, 1]).unwrap();
    /// let bag = EmbeddingBag::from_weight(w, BagMode::Sum).unwrap();
    /// let mut out = Tensor::zeros(data_sparsifier::DType::F32, [0]);
    /// for batch in [[0, 1], [1, 2]] {
    ///     bag.forward_into(&batch, Bags::Fixed { bag_size: 2 }, None, &mut out).unwrap();
    /// }
    /// assert_eq!(out.to_f64_vec(), vec![110.0]);
    /// ```
    pub fn forward_into(
        &self,
        indices: &[i64],
        bags: Bags<'_>,
        per_sample_weights: Option<&[f64]>,
        out: &mut Tensor,
    ) -> Result<()> {
        let w = self.weight.read();
        let (n, d) = table_dims("EmbeddingBag", w.shape())?;
        crate::with_dtype!(w.dtype(), T => {
            let src = DenseRows { src: w.as_slice::<T>().unwrap_or_default(), d };
            bag_forward_into::<T, _>(&src, n, d, self.mode, self.padding_idx, indices, bags, per_sample_weights, out)
        })
    }
}

/// `EmbeddingBag`'s forward over any table of `n` rows of `d` cells: checks the weights, the
/// indices and the bags, then reduces; shape `[num_bags, d]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bag_forward<T: Element + TypedStorage, R: RowSource<T> + Sync>(
    src: &R,
    n: usize,
    d: usize,
    mode: BagMode,
    padding: Option<usize>,
    indices: &[i64],
    bags: Bags<'_>,
    per_sample_weights: Option<&[f64]>,
) -> Result<Tensor> {
    let mut out = Tensor::zeros(T::DTYPE, [0, d]);
    bag_forward_into::<T, R>(
        src,
        n,
        d,
        mode,
        padding,
        indices,
        bags,
        per_sample_weights,
        &mut out,
    )?;
    Ok(out)
}

/// [`bag_forward`] into `out`: its buffer is reused when it already has the output's dtype
/// and shape (a server's steady state: no allocation, no page faults), else replaced.
#[allow(clippy::too_many_arguments)]
pub(crate) fn bag_forward_into<T: Element + TypedStorage, R: RowSource<T> + Sync>(
    src: &R,
    n: usize,
    d: usize,
    mode: BagMode,
    padding: Option<usize>,
    indices: &[i64],
    bags: Bags<'_>,
    per_sample_weights: Option<&[f64]>,
    out: &mut Tensor,
) -> Result<()> {
    check_per_sample_weights("EmbeddingBag", mode, per_sample_weights, indices.len())?;
    for (pos, &i) in indices.iter().enumerate() {
        check_index("EmbeddingBag", i, pos, n)?;
    }
    let ranges = bag_ranges(indices.len(), bags)?;
    let shape = [ranges.len(), d];
    if out.dtype() != T::DTYPE || out.shape() != shape || out.as_slice_mut::<T>().is_none() {
        *out = Tensor::zeros(T::DTYPE, shape);
    }
    if let Some(buf) = out.as_slice_mut::<T>() {
        reduce_bags::<T, R>(
            src,
            d,
            indices,
            &ranges,
            mode,
            padding,
            per_sample_weights,
            buf,
        );
    }
    Ok(())
}

/// `per_sample_weights` are only for sum mode and need one weight per index (shared with the
/// quantized `EmbeddingBag`).
pub(crate) fn check_per_sample_weights(
    module: &'static str,
    mode: BagMode,
    per_sample_weights: Option<&[f64]>,
    n_indices: usize,
) -> Result<()> {
    if let Some(psw) = per_sample_weights {
        if mode != BagMode::Sum {
            return Err(Error::InvalidLookup {
                module,
                message: format!("per_sample_weights are only supported in sum mode, not {mode:?}"),
            });
        }
        if psw.len() != n_indices {
            return Err(Error::InvalidLookup {
                module,
                message: format!(
                    "per_sample_weights has {} entries for {n_indices} indices",
                    psw.len()
                ),
            });
        }
    }
    Ok(())
}

/// Bags per parallel task: enough work to pay for a task, small enough to split a batch of a
/// few thousand bags over every core.
const BAGS_PER_TASK: usize = 64;

/// Reduces every bag, in parallel over groups of bags (each bag's own order of additions is
/// fixed, so the answer does not depend on the thread count), with the CPU's fused multiply-add
/// where it has one ([`crate::simd::dispatch`]).
#[allow(clippy::too_many_arguments)]
fn reduce_bags<T: Element + TypedStorage, R: RowSource<T> + Sync>(
    src: &R,
    d: usize,
    rows: &[i64],
    ranges: &[(usize, usize)],
    mode: BagMode,
    padding: Option<usize>,
    psw: Option<&[f64]>,
    out: &mut [T],
) {
    use rayon::prelude::*;
    if d == 0 {
        return;
    }
    out.par_chunks_mut(BAGS_PER_TASK * d)
        .zip(ranges.par_chunks(BAGS_PER_TASK))
        .for_each(|(out, ranges)| {
            crate::simd::dispatch(BagGroup {
                src,
                d,
                rows,
                ranges,
                mode,
                padding,
                psw,
                out,
            })
        });
}

/// One parallel task of [`reduce_bags`]: the bags `ranges`, reduced into `out` (`ranges.len() ×
/// d` cells); `rows` are the indices, checked to be in range.
struct BagGroup<'a, T, R> {
    src: &'a R,
    d: usize,
    rows: &'a [i64],
    ranges: &'a [(usize, usize)],
    mode: BagMode,
    padding: Option<usize>,
    psw: Option<&'a [f64]>,
    out: &'a mut [T],
}

impl<T: Element + TypedStorage, R: RowSource<T>> crate::simd::Kernel for BagGroup<'_, T, R> {
    type Output = ();
    /// The common widths get an accumulator of a size known at compile time, which the
    /// compiler keeps in vector registers across a bag's rows (the other widths, and the
    /// sources that index it at run time, keep it on the stack or heap).
    #[inline(always)]
    fn run(self) {
        match self.d {
            8 => self.run_fixed::<8>(),
            16 => self.run_fixed::<16>(),
            32 => self.run_fixed::<32>(),
            64 => self.run_fixed::<64>(),
            128 => self.run_fixed::<128>(),
            d => {
                let mut acc = vec![T::acc_zero(); d];
                let mut scratch = vec![T::ZERO; d];
                self.reduce(&mut acc, &mut scratch)
            }
        }
    }
}

impl<T: Element + TypedStorage, R: RowSource<T>> BagGroup<'_, T, R> {
    #[inline(always)]
    fn run_fixed<const D: usize>(self) {
        let mut acc = [T::acc_zero(); D];
        let mut scratch = [T::ZERO; D];
        self.reduce(&mut acc, &mut scratch)
    }

    /// The reduction, with `acc` and `scratch` of `d` cells.
    #[inline(always)]
    fn reduce(self, acc: &mut [T::Acc], scratch: &mut [T]) {
        let BagGroup {
            src,
            d,
            rows,
            ranges,
            mode,
            padding,
            psw,
            out,
        } = self;
        for (&(s, e), out) in ranges.iter().zip(out.chunks_exact_mut(d)) {
            acc.iter_mut().for_each(|a| *a = T::acc_zero());
            let mut count = 0usize;
            let mut any_max = false;
            for (j, &r) in rows.iter().enumerate().take(e).skip(s) {
                let r = r as usize;
                if let Some(&far) = rows.get(j + PREFETCH_FAR) {
                    src.prefetch_far(far as usize);
                }
                if let Some(&near) = rows.get(j + PREFETCH_NEAR) {
                    src.prefetch_near(near as usize);
                }
                if Some(r) == padding {
                    continue;
                }
                count += 1;
                match mode {
                    BagMode::Sum | BagMode::Mean => {
                        let wgt = psw.map(|p| T::acc_from_f64(p[j]));
                        src.add_row(r, acc, wgt, scratch);
                    }
                    BagMode::Max => {
                        let row = src.row(r, scratch);
                        for (a, &x) in acc.iter_mut().zip(row) {
                            let v = x.to_acc();
                            if !any_max || v > *a {
                                *a = v;
                            }
                        }
                        any_max = true;
                    }
                }
            }
            for (o, &a) in out.iter_mut().zip(acc.iter()) {
                let v = if mode == BagMode::Mean && count > 0 {
                    a / T::acc_from_usize(count)
                } else {
                    a
                };
                *o = T::from_acc(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Tensor {
        Tensor::from_vec((0..12).map(|i| i as f32).collect::<Vec<_>>(), [4, 3]).unwrap()
    }

    #[test]
    fn sum_mean_max_with_offsets() {
        let idx = [0, 2, 3, 1];
        let bags = Bags::Offsets {
            offsets: &[0, 3, 3],
            include_last_offset: false,
        };
        let sum = EmbeddingBag::from_weight(table(), BagMode::Sum).unwrap();
        let out = sum.forward(&idx, bags, None).unwrap();
        assert_eq!(out.shape(), &[3, 3]);
        // rows 0,2,3 = [0,1,2]+[6,7,8]+[9,10,11]; empty bag; row 1
        assert_eq!(
            out.as_slice::<f32>().unwrap(),
            &[15.0, 18.0, 21.0, 0.0, 0.0, 0.0, 3.0, 4.0, 5.0]
        );
        let mean = EmbeddingBag::from_weight(table(), BagMode::Mean).unwrap();
        let out = mean.forward(&idx, bags, None).unwrap();
        assert_eq!(&out.as_slice::<f32>().unwrap()[..3], &[5.0, 6.0, 7.0]);
        let max = EmbeddingBag::from_weight(table(), BagMode::Max).unwrap();
        let out = max.forward(&idx, bags, None).unwrap();
        assert_eq!(
            out.as_slice::<f32>().unwrap(),
            &[9.0, 10.0, 11.0, 0.0, 0.0, 0.0, 3.0, 4.0, 5.0]
        );
    }

    #[test]
    fn include_last_offset_and_fixed_bags() {
        let sum = EmbeddingBag::from_weight(table(), BagMode::Sum).unwrap();
        let a = sum
            .forward(
                &[0, 1, 2, 3],
                Bags::Offsets {
                    offsets: &[0, 2, 4],
                    include_last_offset: true,
                },
                None,
            )
            .unwrap();
        let b = sum
            .forward(&[0, 1, 2, 3], Bags::Fixed { bag_size: 2 }, None)
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a.shape(), &[2, 3]);
    }

    #[test]
    fn per_sample_weights_only_in_sum_mode() {
        let sum = EmbeddingBag::from_weight(table(), BagMode::Sum).unwrap();
        let out = sum
            .forward(&[1, 2], Bags::Fixed { bag_size: 2 }, Some(&[2.0, -1.0]))
            .unwrap();
        assert_eq!(out.as_slice::<f32>().unwrap(), &[0.0, 1.0, 2.0]);
        let mean = EmbeddingBag::from_weight(table(), BagMode::Mean).unwrap();
        assert!(mean
            .forward(&[1, 2], Bags::Fixed { bag_size: 2 }, Some(&[2.0, -1.0]))
            .is_err());
        assert!(sum
            .forward(&[1, 2], Bags::Fixed { bag_size: 2 }, Some(&[2.0]))
            .is_err());
    }

    #[test]
    fn padding_idx_is_skipped_and_not_counted() {
        let w = Parameter::new(table());
        let mean = EmbeddingBag::from_parameter(w, BagMode::Mean, Some(-1)).unwrap();
        assert_eq!(mean.padding_idx(), Some(3));
        let out = mean
            .forward(&[0, 3, 2], Bags::Fixed { bag_size: 3 }, None)
            .unwrap();
        assert_eq!(out.as_slice::<f32>().unwrap(), &[3.0, 4.0, 5.0]);
        let emb = Embedding::new(5, 2, DType::F32, Some(1), 3).unwrap();
        let row = emb.forward(&[1]).unwrap();
        assert_eq!(row.as_slice::<f32>().unwrap(), &[0.0, 0.0]);
    }

    #[test]
    fn bad_lookups_are_errors() {
        let bag = EmbeddingBag::from_weight(table(), BagMode::Sum).unwrap();
        let offs = |o: &'static [i64]| Bags::Offsets {
            offsets: o,
            include_last_offset: false,
        };
        assert!(matches!(
            bag.forward(&[4], offs(&[0]), None),
            Err(Error::IndexOutOfRange { index: 4, .. })
        ));
        assert!(bag.forward(&[-1], offs(&[0]), None).is_err());
        assert!(bag.forward(&[0, 1], offs(&[1]), None).is_err());
        assert!(bag.forward(&[0, 1], offs(&[0, 2, 1]), None).is_err());
        assert!(bag.forward(&[0, 1], offs(&[0, 3]), None).is_err());
        assert!(bag
            .forward(&[0, 1, 2], Bags::Fixed { bag_size: 2 }, None)
            .is_err());
        assert!(Embedding::from_weight(Tensor::zeros(DType::F32, [3])).is_err());
        assert!(Embedding::new(3, 2, DType::F32, Some(3), 0).is_err());
    }

    #[test]
    fn half_precision_accumulates_in_f32() {
        // 2048 + 1 + 1 in f16 would round to 2048 at each step; in f32 it is 2050.
        let w = Tensor::from_f64s(&[2048.0, 1.0, 1.0], DType::F16, [3, 1]).unwrap();
        let bag = EmbeddingBag::from_weight(w, BagMode::Sum).unwrap();
        let out = bag
            .forward(&[0, 1, 2], Bags::Fixed { bag_size: 3 }, None)
            .unwrap();
        assert_eq!(out.to_f64_vec(), vec![2050.0]);
    }
}
