//! A small tensor type of our own: typed storage, a shape, zero-copy slice views, and a shared
//! handle ([`Parameter`]). It is not a math library: it has only what sparsification needs.

use std::fmt;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::dtype::{bf16, f16, DType, Element};
use crate::error::{Error, Result};
use crate::mask::Mask;

pub use crate::handle::{ExternalTensor, Handle};

/// Typed, owned element storage.
///
/// ```
/// use data_sparsifier::{tensor::Storage, DType, tensor::Slice};
/// let s = Storage::F64(vec![1.0, 2.0]);
/// assert_eq!((s.dtype(), s.len(), s.is_empty()), (DType::F64, 2, false));
/// assert!(s.as_slice() == Slice::F64(&[1.0, 2.0]));
/// ```
#[derive(Clone, PartialEq)]
pub enum Storage {
    /// `f32` elements.
    F32(Vec<f32>),
    /// `f64` elements.
    F64(Vec<f64>),
    /// `f16` elements.
    F16(Vec<f16>),
    /// `bf16` elements.
    BF16(Vec<bf16>),
}

/// A typed, borrowed slice: the zero-copy counterpart of [`Storage`].
///
/// ```
/// use data_sparsifier::{DType, tensor::Slice};
/// let s = Slice::F32(&[1.5, -2.0]);
/// assert_eq!((s.dtype(), s.len(), s.is_empty()), (DType::F32, 2, false));
/// assert_eq!(s.get_f64(1), Some(-2.0));
/// ```
#[derive(Clone, Copy, PartialEq)]
pub enum Slice<'a> {
    /// `f32` elements.
    F32(&'a [f32]),
    /// `f64` elements.
    F64(&'a [f64]),
    /// `f16` elements.
    F16(&'a [f16]),
    /// `bf16` elements.
    BF16(&'a [bf16]),
}

/// Conversions between an element type and the typed enums (implemented for every [`Element`]).
///
/// ```
/// use data_sparsifier::{dtype::f16, tensor::{Storage, TypedStorage}, tensor::Slice};
/// let mut s = f16::wrap(vec![f16::ONE, f16::ZERO]);
/// assert!(matches!(s, Storage::F16(_)));
/// assert_eq!(f32::slice(&s), None); // not f32 storage
/// f16::slice_mut(&mut s).unwrap()[1] = f16::from_f32(3.0);
/// assert_eq!(f16::from_slice(s.as_slice()).unwrap()[1].to_f32(), 3.0);
/// assert!(matches!(f64::wrap_slice(&[1.0]), Slice::F64(_)));
/// ```
pub trait TypedStorage: Element {
    /// Wraps a vector.
    fn wrap(v: Vec<Self>) -> Storage;
    /// Borrows the slice if the storage holds this type.
    fn slice(s: &Storage) -> Option<&[Self]>;
    /// Mutably borrows the slice if the storage holds this type.
    fn slice_mut(s: &mut Storage) -> Option<&mut [Self]>;
    /// Borrows from a [`Slice`] if it holds this type.
    fn from_slice(s: Slice<'_>) -> Option<&[Self]>;
    /// Wraps a borrowed slice.
    fn wrap_slice(s: &[Self]) -> Slice<'_>;
}

macro_rules! typed_storage {
    ($t:ty, $v:ident) => {
        impl TypedStorage for $t {
            fn wrap(v: Vec<Self>) -> Storage {
                Storage::$v(v)
            }
            fn slice(s: &Storage) -> Option<&[Self]> {
                match s {
                    Storage::$v(v) => Some(v),
                    _ => None,
                }
            }
            fn slice_mut(s: &mut Storage) -> Option<&mut [Self]> {
                match s {
                    Storage::$v(v) => Some(v),
                    _ => None,
                }
            }
            fn from_slice(s: Slice<'_>) -> Option<&[Self]> {
                match s {
                    Slice::$v(v) => Some(v),
                    _ => None,
                }
            }
            fn wrap_slice(s: &[Self]) -> Slice<'_> {
                Slice::$v(s)
            }
        }
    };
}
typed_storage!(f32, F32);
typed_storage!(f64, F64);
typed_storage!(f16, F16);
typed_storage!(bf16, BF16);

impl Storage {
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.as_slice().dtype()
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }
    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Borrows the storage as a typed slice.
    pub fn as_slice(&self) -> Slice<'_> {
        match self {
            Storage::F32(v) => Slice::F32(v),
            Storage::F64(v) => Slice::F64(v),
            Storage::F16(v) => Slice::F16(v),
            Storage::BF16(v) => Slice::BF16(v),
        }
    }
    fn zeros(dtype: DType, n: usize) -> Storage {
        crate::with_dtype!(dtype, T => T::wrap(vec![T::ZERO; n]))
    }
}

impl<'a> Slice<'a> {
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Slice::F32(_) => DType::F32,
            Slice::F64(_) => DType::F64,
            Slice::F16(_) => DType::F16,
            Slice::BF16(_) => DType::BF16,
        }
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Slice::F32(v) => v.len(),
            Slice::F64(v) => v.len(),
            Slice::F16(v) => v.len(),
            Slice::BF16(v) => v.len(),
        }
    }
    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The raw little-endian bytes (zero-copy).
    ///
    /// ```
    /// use data_sparsifier::tensor::Slice;
    /// let s = Slice::F32(&[1.0]);
    /// assert_eq!(s.as_bytes(), &1.0f32.to_le_bytes());
    /// ```
    pub fn as_bytes(&self) -> &'a [u8] {
        match *self {
            Slice::F32(v) => bytemuck::cast_slice(v),
            Slice::F64(v) => bytemuck::cast_slice(v),
            Slice::F16(v) => bytemuck::cast_slice(v),
            Slice::BF16(v) => bytemuck::cast_slice(v),
        }
    }
    /// Element `i` widened to f64, or `None` past the end.
    ///
    /// ```
    /// use data_sparsifier::{dtype::bf16, tensor::Slice};
    /// let v = [bf16::from_f32(0.5)];
    /// let s = Slice::BF16(&v);
    /// assert_eq!((s.get_f64(0), s.get_f64(1)), (Some(0.5), None));
    /// ```
    pub fn get_f64(&self, i: usize) -> Option<f64> {
        match self {
            Slice::F32(v) => v.get(i).map(|x| x.to_f64()),
            Slice::F64(v) => v.get(i).copied(),
            Slice::F16(v) => v.get(i).map(|x| x.to_f64()),
            Slice::BF16(v) => v.get(i).map(|x| x.to_f64()),
        }
    }
    /// Reinterprets little-endian bytes as a typed slice without copying. Returns `None` if the bytes
    /// are not aligned for the type or their length is not a multiple of its size.
    ///
    /// ```
    /// use data_sparsifier::{DType, tensor::Slice, Tensor};
    /// let t = Tensor::from_vec(vec![1.0f32, 2.0], [2]).unwrap();
    /// let s = Slice::try_from_bytes(DType::F32, t.as_bytes()).unwrap();
    /// assert!(s == Slice::F32(&[1.0, 2.0]));
    /// assert!(Slice::try_from_bytes(DType::F32, &t.as_bytes()[..7]).is_none()); // not whole elements
    /// ```
    pub fn try_from_bytes(dtype: DType, bytes: &'a [u8]) -> Option<Slice<'a>> {
        Some(match dtype {
            DType::F32 => Slice::F32(bytemuck::try_cast_slice(bytes).ok()?),
            DType::F64 => Slice::F64(bytemuck::try_cast_slice(bytes).ok()?),
            DType::F16 => Slice::F16(bytemuck::try_cast_slice(bytes).ok()?),
            DType::BF16 => Slice::BF16(bytemuck::try_cast_slice(bytes).ok()?),
        })
    }
    /// Copies into owned storage.
    ///
    /// ```
    /// use data_sparsifier::{tensor::Storage, tensor::Slice};
    /// let s = Slice::F64(&[1.0, 2.0]).to_storage();
    /// assert!(s == Storage::F64(vec![1.0, 2.0]));
    /// ```
    pub fn to_storage(&self) -> Storage {
        match *self {
            Slice::F32(v) => Storage::F32(v.to_vec()),
            Slice::F64(v) => Storage::F64(v.to_vec()),
            Slice::F16(v) => Storage::F16(v.to_vec()),
            Slice::BF16(v) => Storage::BF16(v.to_vec()),
        }
    }
}

/// Checks that `shape` holds `len` elements.
fn check_numel(what: &str, shape: &[usize], len: usize) -> Result<()> {
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::ShapeMismatch {
            what: format!("{what} (element count overflows usize)"),
            expected: vec![],
            actual: shape.to_vec(),
        })?;
    if numel != len {
        return Err(Error::ShapeMismatch {
            what: format!("{what}: {len} elements do not fill the shape"),
            expected: vec![len],
            actual: shape.to_vec(),
        });
    }
    Ok(())
}

/// Checks that a tensor of `shape` and `dtype` can exist in memory: its element count and byte
/// size fit in `isize`. Returns the element count. Constructors that take sizes from users call
/// this first, so a huge size is an error rather than an allocation panic.
pub(crate) fn checked_numel(what: &str, shape: &[usize], elem_bytes: usize) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .filter(|n| {
            n.checked_mul(elem_bytes.max(1))
                .is_some_and(|b| b <= isize::MAX as usize)
        })
        .ok_or_else(|| Error::ShapeMismatch {
            what: format!(
                "{what}: the shape is too large to exist in memory; use smaller dimensions"
            ),
            expected: vec![],
            actual: shape.to_vec(),
        })
}

/// Number of elements of a shape (1 for a scalar `[]`). Saturates instead of overflowing.
///
/// ```
/// use data_sparsifier::tensor::numel;
/// assert_eq!(numel(&[2, 3, 4]), 24);
/// assert_eq!(numel(&[]), 1); // a scalar
/// assert_eq!(numel(&[5, 0]), 0);
/// assert_eq!(numel(&[usize::MAX, 2]), usize::MAX); // saturates
/// ```
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().fold(1usize, |a, &d| a.saturating_mul(d))
}

/// How a shape is seen as a 2-D (rows, cols) matrix: 0-D is 1×1, 1-D `(n,)` is one row `1×n`,
/// 2-D is itself. More than two dims returns `None`.
///
/// This is the fix for PyTorch's `squeeze()`: `(n, 1)` stays n rows of one column.
///
/// ```
/// use data_sparsifier::tensor::as_2d;
/// assert_eq!(as_2d(&[10]), Some((1, 10)));
/// assert_eq!(as_2d(&[10, 1]), Some((10, 1)));
/// assert_eq!(as_2d(&[]), Some((1, 1)));
/// assert_eq!(as_2d(&[2, 3, 4]), None);
/// ```
pub fn as_2d(shape: &[usize]) -> Option<(usize, usize)> {
    match shape {
        [] => Some((1, 1)),
        [n] => Some((1, *n)),
        [h, w] => Some((*h, *w)),
        _ => None,
    }
}

/// A borrowed, typed, shaped view of tensor data: what kernels and [`UpdateMask`](crate::UpdateMask)
/// implementations read. It can point into a [`Tensor`], a memory-mapped file, or any slice.
///
/// ```
/// use data_sparsifier::TensorView;
/// let data = [1.0f32, -2.0, 3.0, -4.0];
/// let v = TensorView::new(&data[..], &[2, 2]).unwrap();
/// assert_eq!(v.rows_cols(), Some((2, 2)));
/// assert_eq!(v.as_slice::<f32>(), Some(&data[..]));
/// ```
#[derive(Clone, Copy)]
pub struct TensorView<'a> {
    shape: &'a [usize],
    data: Slice<'a>,
}

impl<'a> TensorView<'a> {
    /// A view of a typed slice with a shape; the element count must match.
    pub fn new<T: TypedStorage>(data: &'a [T], shape: &'a [usize]) -> Result<Self> {
        Self::from_slice(T::wrap_slice(data), shape)
    }
    /// A view of a [`Slice`] with a shape; the element count must match.
    ///
    /// ```
    /// use data_sparsifier::{tensor::Slice, TensorView};
    /// let v = TensorView::from_slice(Slice::F64(&[1.0, 2.0, 3.0]), &[3]).unwrap();
    /// assert_eq!((v.shape(), v.numel()), (&[3][..], 3));
    /// assert_eq!(v.data().get_f64(2), Some(3.0));
    /// assert!(TensorView::from_slice(Slice::F64(&[1.0]), &[2]).is_err());
    /// ```
    pub fn from_slice(data: Slice<'a>, shape: &'a [usize]) -> Result<Self> {
        check_numel("tensor view", shape, data.len())?;
        Ok(TensorView { shape, data })
    }
    /// The shape.
    pub fn shape(&self) -> &'a [usize] {
        self.shape
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    /// The data as a [`Slice`].
    pub fn data(&self) -> Slice<'a> {
        self.data
    }
    /// The data as `&[T]`, if `T` is its element type.
    pub fn as_slice<T: TypedStorage>(&self) -> Option<&'a [T]> {
        T::from_slice(self.data)
    }
    /// The 2-D interpretation of the shape, see [`as_2d`].
    pub fn rows_cols(&self) -> Option<(usize, usize)> {
        as_2d(self.shape)
    }
    /// Copies into an owned [`Tensor`].
    ///
    /// ```
    /// use data_sparsifier::TensorView;
    /// let data = [1.0f32, 2.0];
    /// let t = TensorView::new(&data[..], &[1, 2]).unwrap().to_tensor();
    /// assert_eq!((t.shape(), t.to_f64_vec()), (&[1, 2][..], vec![1.0, 2.0]));
    /// ```
    pub fn to_tensor(&self) -> Tensor {
        Tensor {
            shape: self.shape.to_vec(),
            storage: self.data.to_storage(),
        }
    }
    /// The first NaN's flat index, if any (parallel scan).
    ///
    /// ```
    /// use data_sparsifier::TensorView;
    /// let data = [1.0f64, f64::NAN, 3.0, f64::NAN];
    /// assert_eq!(TensorView::new(&data[..], &[4]).unwrap().first_nan(), Some(1));
    /// assert_eq!(TensorView::new(&data[..1], &[1]).unwrap().first_nan(), None);
    /// ```
    pub fn first_nan(&self) -> Option<usize> {
        use rayon::prelude::*;
        fn scan<T: Element>(s: &[T]) -> Option<usize> {
            s.par_iter().position_first(|x| x.is_nan())
        }
        match self.data {
            Slice::F32(s) => scan(s),
            Slice::F64(s) => scan(s),
            Slice::F16(s) => scan(s),
            Slice::BF16(s) => scan(s),
        }
    }
}

impl fmt::Debug for TensorView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TensorView({}, {:?})", self.dtype(), self.shape)
    }
}

/// An owned tensor: a dtype, a shape and row-major data. `Clone` copies the data.
///
/// ```
/// use data_sparsifier::{DType, Tensor};
/// let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3]).unwrap();
/// assert_eq!(t.shape(), &[2, 3]);
/// assert_eq!(t.dtype(), DType::F32);
/// assert_eq!(t.as_slice::<f32>().unwrap()[5], 6.0);
/// let h = t.to_dtype(DType::F16);
/// assert_eq!(h.to_f64_vec(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
/// ```
#[derive(Clone, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl Tensor {
    /// A copy in memory the kernel is asked to back with transparent huge pages (on Linux,
    /// where it has them; elsewhere an ordinary copy). For tables that lookups read at random:
    /// with 4 KiB pages each cold row also misses the TLB, and a bag over a 1M × 64 f32 copy
    /// with huge pages ran about 2.5x faster here (`scripts/lookup_speed.py`).
    ///
    /// ```
    /// use data_sparsifier::Tensor;
    /// let t = Tensor::from_vec(vec![1.0f32, 2.0], [2]).unwrap();
    /// assert_eq!(t.with_huge_pages(), t);
    /// ```
    pub fn with_huge_pages(&self) -> Tensor {
        crate::with_dtype!(self.dtype(), T => {
            let data = crate::mem::huge_copy(self.as_slice::<T>().unwrap_or_default());
            Tensor { shape: self.shape.clone(), storage: T::wrap(data) }
        })
    }

    /// A tensor from a vector and a shape; the element count must match.
    pub fn from_vec<T: TypedStorage>(data: Vec<T>, shape: impl Into<Vec<usize>>) -> Result<Self> {
        Self::from_storage(T::wrap(data), shape)
    }
    /// A tensor from storage and a shape; the element count must match.
    ///
    /// ```
    /// use data_sparsifier::{tensor::Storage, DType, Tensor};
    /// let t = Tensor::from_storage(Storage::F64(vec![1.0, 2.0, 3.0, 4.0]), [2, 2]).unwrap();
    /// assert_eq!(t.dtype(), DType::F64);
    /// assert!(Tensor::from_storage(Storage::F64(vec![1.0]), [2, 2]).is_err());
    /// ```
    pub fn from_storage(storage: Storage, shape: impl Into<Vec<usize>>) -> Result<Self> {
        let shape = shape.into();
        check_numel("tensor", &shape, storage.len())?;
        Ok(Tensor { shape, storage })
    }
    /// A tensor of zeros.
    ///
    /// # Panics
    ///
    /// If the shape holds more elements than memory can (as `vec!` does); sizes that come from
    /// users go through a fallible constructor such as [`Tensor::from_vec`] or
    /// [`Embedding::new`](crate::Embedding::new).
    ///
    /// ```
    /// use data_sparsifier::{DType, Tensor};
    /// let t = Tensor::zeros(DType::BF16, [2, 3]);
    /// assert_eq!((t.shape(), t.dtype()), (&[2, 3][..], DType::BF16));
    /// assert_eq!(t.zero_fraction(), 1.0);
    /// ```
    pub fn zeros(dtype: DType, shape: impl Into<Vec<usize>>) -> Self {
        let shape = shape.into();
        let storage = Storage::zeros(dtype, numel(&shape));
        Tensor { shape, storage }
    }
    /// A tensor from f64 values converted to `dtype` (rounding to nearest).
    ///
    /// ```
    /// use data_sparsifier::{DType, Tensor};
    /// let t = Tensor::from_f64s(&[0.1, 1.5], DType::F16, [2]).unwrap();
    /// assert_eq!(t.dtype(), DType::F16);
    /// assert_eq!(t.to_f64_vec()[1], 1.5);
    /// assert_ne!(t.to_f64_vec()[0], 0.1); // rounded to the nearest f16
    /// ```
    pub fn from_f64s(values: &[f64], dtype: DType, shape: impl Into<Vec<usize>>) -> Result<Self> {
        let storage = crate::with_dtype!(dtype, T => T::wrap(values.iter().map(|&v| T::from_f64(v)).collect()));
        Self::from_storage(storage, shape)
    }
    /// Copies little-endian bytes (any alignment) into a tensor.
    ///
    /// ```
    /// use data_sparsifier::{DType, Tensor};
    /// let mut bytes = vec![0u8]; // an offset, so the data below is misaligned
    /// bytes.extend(1.0f32.to_le_bytes());
    /// bytes.extend((-2.0f32).to_le_bytes());
    /// let t = Tensor::from_le_bytes(DType::F32, [2], &bytes[1..]).unwrap();
    /// assert_eq!(t.as_slice::<f32>().unwrap(), &[1.0, -2.0]);
    /// assert!(Tensor::from_le_bytes(DType::F32, [2], &bytes[1..8]).is_err());
    /// ```
    pub fn from_le_bytes(dtype: DType, shape: impl Into<Vec<usize>>, bytes: &[u8]) -> Result<Self> {
        let shape = shape.into();
        let size = dtype.size_in_bytes();
        if bytes.len() % size != 0 {
            return Err(Error::ShapeMismatch {
                what: format!(
                    "{} bytes are not a whole number of {dtype} elements",
                    bytes.len()
                ),
                expected: vec![],
                actual: shape,
            });
        }
        let storage = crate::with_dtype!(dtype, T => {
            let mut v = vec![T::ZERO; bytes.len() / size];
            bytemuck::cast_slice_mut::<T, u8>(&mut v).copy_from_slice(bytes);
            T::wrap(v)
        });
        Self::from_storage(storage, shape)
    }
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.storage.len()
    }
    /// Size of the data in bytes.
    ///
    /// ```
    /// use data_sparsifier::{DType, Tensor};
    /// let t = Tensor::zeros(DType::F64, [3, 5]);
    /// assert_eq!((t.numel(), t.size_in_bytes()), (15, 120));
    /// ```
    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype().size_in_bytes()
    }
    /// The storage.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }
    /// Consumes the tensor, returning its storage.
    ///
    /// ```
    /// use data_sparsifier::{tensor::Storage, Tensor};
    /// let t = Tensor::from_vec(vec![1.0f64, 2.0], [2]).unwrap();
    /// assert!(t.storage() == &Storage::F64(vec![1.0, 2.0]));
    /// assert!(t.into_storage() == Storage::F64(vec![1.0, 2.0]));
    /// ```
    pub fn into_storage(self) -> Storage {
        self.storage
    }
    /// A zero-copy view.
    ///
    /// ```
    /// use data_sparsifier::Tensor;
    /// let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [2, 2]).unwrap();
    /// let v = t.view();
    /// assert_eq!((v.shape(), v.rows_cols()), (&[2, 2][..], Some((2, 2))));
    /// assert_eq!(v.to_tensor(), t);
    /// ```
    pub fn view(&self) -> TensorView<'_> {
        TensorView {
            shape: &self.shape,
            data: self.storage.as_slice(),
        }
    }
    /// The data as `&[T]`, if `T` is its element type.
    pub fn as_slice<T: TypedStorage>(&self) -> Option<&[T]> {
        T::slice(&self.storage)
    }
    /// The data as `&mut [T]`, if `T` is its element type.
    ///
    /// ```
    /// use data_sparsifier::Tensor;
    /// let mut t = Tensor::from_vec(vec![1.0f32, 2.0], [2]).unwrap();
    /// t.as_slice_mut::<f32>().unwrap()[1] = 5.0;
    /// assert_eq!(t.to_f64_vec(), vec![1.0, 5.0]);
    /// assert!(t.as_slice_mut::<f64>().is_none()); // wrong element type
    /// ```
    pub fn as_slice_mut<T: TypedStorage>(&mut self) -> Option<&mut [T]> {
        T::slice_mut(&mut self.storage)
    }
    /// The raw little-endian bytes.
    ///
    /// ```
    /// use data_sparsifier::Tensor;
    /// let t = Tensor::from_vec(vec![1.0f64], [1]).unwrap();
    /// assert_eq!(t.as_bytes(), &1.0f64.to_le_bytes());
    /// ```
    pub fn as_bytes(&self) -> &[u8] {
        self.storage.as_slice().as_bytes()
    }
    /// Every element widened to f64.
    ///
    /// ```
    /// use data_sparsifier::{DType, Tensor};
    /// let t = Tensor::from_f64s(&[1.0, -0.5], DType::BF16, [2]).unwrap();
    /// assert_eq!(t.to_f64_vec(), vec![1.0, -0.5]);
    /// ```
    pub fn to_f64_vec(&self) -> Vec<f64> {
        crate::with_dtype!(self.dtype(), T => self.as_slice::<T>().map(|s| s.iter().map(|x| x.to_f64()).collect()).unwrap_or_default())
    }
    /// A copy converted to another dtype (through f64, rounding to nearest).
    ///
    /// ```
    /// use data_sparsifier::{DType, Tensor};
    /// let t = Tensor::from_vec(vec![1.0f64, 1.0 + 1e-9], [2]).unwrap();
    /// let f = t.to_dtype(DType::F32);
    /// assert_eq!(f.dtype(), DType::F32);
    /// assert_eq!(f.as_slice::<f32>().unwrap(), &[1.0, 1.0]); // rounded to nearest
    /// ```
    pub fn to_dtype(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let values = self.to_f64_vec();
        let storage = crate::with_dtype!(dtype, T => T::wrap(values.iter().map(|&v| T::from_f64(v)).collect()));
        Tensor {
            shape: self.shape.clone(),
            storage,
        }
    }
    /// The same data under another shape with the same element count.
    ///
    /// ```
    /// use data_sparsifier::Tensor;
    /// let t = Tensor::from_vec(vec![1.0f32; 6], [2, 3]).unwrap();
    /// let t = t.reshape([3, 2]).unwrap();
    /// assert_eq!(t.shape(), &[3, 2]);
    /// assert!(t.reshape([4, 2]).is_err());
    /// ```
    pub fn reshape(self, shape: impl Into<Vec<usize>>) -> Result<Tensor> {
        Tensor::from_storage(self.storage, shape)
    }
    /// Zeroes every element whose mask bit is 0, in place. The mask must have this tensor's shape.
    ///
    /// ```
    /// use data_sparsifier::{Mask, Tensor};
    /// let mut t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3]).unwrap();
    /// t.apply_mask(&Mask::from_dense_u8([3], &[1, 0, 1]).unwrap()).unwrap();
    /// assert_eq!(t.to_f64_vec(), vec![1.0, 0.0, 3.0]);
    /// assert!(t.apply_mask(&Mask::ones([4])).is_err());
    /// ```
    pub fn apply_mask(&mut self, mask: &Mask) -> Result<()> {
        mask.check_shape("apply_mask", &self.shape)?;
        match &mut self.storage {
            Storage::F32(v) => mask.apply(v),
            Storage::F64(v) => mask.apply(v),
            Storage::F16(v) => mask.apply(v),
            Storage::BF16(v) => mask.apply(v),
        }
        Ok(())
    }
    /// A copy with the mask applied.
    ///
    /// ```
    /// use data_sparsifier::{Mask, Tensor};
    /// let t = Tensor::from_vec(vec![1.0f32, 2.0], [2]).unwrap();
    /// let m = t.masked(&Mask::from_dense_u8([2], &[0, 1]).unwrap()).unwrap();
    /// assert_eq!(m.to_f64_vec(), vec![0.0, 2.0]);
    /// assert_eq!(t.to_f64_vec(), vec![1.0, 2.0]); // unchanged
    /// ```
    pub fn masked(&self, mask: &Mask) -> Result<Tensor> {
        let mut t = self.clone();
        t.apply_mask(mask)?;
        Ok(t)
    }
    /// The fraction of elements that are exactly zero (0 for an empty tensor).
    ///
    /// ```
    /// use data_sparsifier::Tensor;
    /// let t = Tensor::from_vec(vec![0.0f32, 1.0, 0.0, -0.0], [4]).unwrap();
    /// assert_eq!(t.zero_fraction(), 0.75); // -0.0 counts as zero
    /// ```
    pub fn zero_fraction(&self) -> f64 {
        let n = self.numel();
        if n == 0 {
            return 0.0;
        }
        let zeros = crate::with_dtype!(self.dtype(), T => {
            use rayon::prelude::*;
            self.as_slice::<T>().map(|s| s.par_iter().filter(|x| **x == T::ZERO).count()).unwrap_or(0)
        });
        zeros as f64 / n as f64
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let preview: Vec<f64> = (0..self.numel().min(8))
            .filter_map(|i| self.storage.as_slice().get_f64(i))
            .collect();
        write!(
            f,
            "Tensor({}, {:?}, {:?}{})",
            self.dtype(),
            self.shape,
            preview,
            if self.numel() > 8 { " ..." } else { "" }
        )
    }
}

/// A shared, mutable tensor handle: the equivalent of an `nn.Parameter` held by a model and by the
/// sparsifier at once. Cloning the handle shares the storage (like `Arc`); a squash writes through
/// it, so every holder sees the sparsified values.
///
/// ```
/// use data_sparsifier::{Parameter, Tensor};
/// let p = Parameter::new(Tensor::from_vec(vec![1.0f32, 2.0], [2]).unwrap());
/// let alias = p.clone();
/// p.write().as_slice_mut::<f32>().unwrap()[0] = 9.0;
/// assert_eq!(alias.read().as_slice::<f32>().unwrap()[0], 9.0);
/// assert!(p.ptr_eq(&alias));
/// ```
#[derive(Clone)]
pub struct Parameter {
    inner: Arc<RwLock<Tensor>>,
    requires_grad: bool,
}

impl Parameter {
    /// Wraps a tensor in a new shared handle (`requires_grad` = true, as for `nn.Parameter`).
    ///
    /// ```
    /// use data_sparsifier::{DType, Parameter, Tensor};
    /// let p = Parameter::new(Tensor::zeros(DType::F32, [2, 3]));
    /// assert!(p.requires_grad());
    /// assert_eq!((p.shape(), p.dtype()), (vec![2, 3], DType::F32));
    /// ```
    pub fn new(t: Tensor) -> Self {
        Parameter {
            inner: Arc::new(RwLock::new(t)),
            requires_grad: true,
        }
    }
    /// Sets the `requires_grad` flag (carried for integrations; this crate computes no gradients).
    ///
    /// ```
    /// use data_sparsifier::{DType, Parameter, Tensor};
    /// let p = Parameter::new(Tensor::zeros(DType::F32, [2])).with_requires_grad(false);
    /// assert!(!p.requires_grad());
    /// ```
    pub fn with_requires_grad(mut self, requires_grad: bool) -> Self {
        self.requires_grad = requires_grad;
        self
    }
    /// The `requires_grad` flag.
    pub fn requires_grad(&self) -> bool {
        self.requires_grad
    }
    /// Locks for reading. A poisoned lock (a panic elsewhere while writing) is recovered, not propagated.
    ///
    /// ```
    /// use data_sparsifier::{Parameter, Tensor};
    /// let p = Parameter::new(Tensor::from_vec(vec![1.0f32, 2.0], [2]).unwrap());
    /// let guard = p.read();
    /// assert_eq!(guard.as_slice::<f32>().unwrap(), &[1.0, 2.0]);
    /// ```
    pub fn read(&self) -> RwLockReadGuard<'_, Tensor> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }
    /// Locks for writing.
    ///
    /// ```
    /// use data_sparsifier::{Mask, Parameter, Tensor};
    /// let p = Parameter::new(Tensor::from_vec(vec![1.0f32, 2.0], [2]).unwrap());
    /// p.write().apply_mask(&Mask::from_dense_u8([2], &[0, 1]).unwrap()).unwrap();
    /// assert_eq!(p.read().to_f64_vec(), vec![0.0, 2.0]);
    /// ```
    pub fn write(&self) -> RwLockWriteGuard<'_, Tensor> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }
    /// Whether two handles share the same storage.
    ///
    /// ```
    /// use data_sparsifier::{DType, Parameter, Tensor};
    /// let p = Parameter::new(Tensor::zeros(DType::F32, [2]));
    /// let same = p.clone();
    /// let copy = Parameter::new(p.snapshot());
    /// assert!(p.ptr_eq(&same));
    /// assert!(!p.ptr_eq(&copy)); // equal values, separate storage
    /// ```
    pub fn ptr_eq(&self, other: &Parameter) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
    /// Replaces the contents (PyTorch's `param.data = t`): every holder sees the new tensor.
    ///
    /// ```
    /// use data_sparsifier::{DType, Parameter, Tensor};
    /// let p = Parameter::new(Tensor::zeros(DType::F32, [2]));
    /// let alias = p.clone();
    /// p.set(Tensor::zeros(DType::F64, [3, 3])); // any shape and dtype
    /// assert_eq!((alias.shape(), alias.dtype()), (vec![3, 3], DType::F64));
    /// ```
    pub fn set(&self, t: Tensor) {
        *self.write() = t;
    }
    /// A copy of the current contents.
    ///
    /// ```
    /// use data_sparsifier::{Parameter, Tensor};
    /// let p = Parameter::new(Tensor::from_vec(vec![1.0f32], [1]).unwrap());
    /// let before = p.snapshot();
    /// p.write().as_slice_mut::<f32>().unwrap()[0] = 2.0;
    /// assert_eq!(before.to_f64_vec(), vec![1.0]); // a copy, not a view
    /// ```
    pub fn snapshot(&self) -> Tensor {
        self.read().clone()
    }
    /// The shape (locks briefly).
    pub fn shape(&self) -> Vec<usize> {
        self.read().shape().to_vec()
    }
    /// The dtype (locks briefly).
    pub fn dtype(&self) -> DType {
        self.read().dtype()
    }
}

impl fmt::Debug for Parameter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Parameter({:?})", &*self.read())
    }
}

impl From<Tensor> for Parameter {
    fn from(t: Tensor) -> Self {
        Parameter::new(t)
    }
}
