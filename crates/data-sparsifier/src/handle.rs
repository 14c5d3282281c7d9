//! What an entry's data lives in: our own [`Parameter`], or storage owned by another framework
//! (a candle `Var`, say) through the [`ExternalTensor`] trait.

use std::fmt;
use std::sync::Arc;

use crate::dtype::DType;
use crate::error::Result;
use crate::mask::Mask;
use crate::tensor::{Parameter, Tensor, TensorView};

/// Tensor storage owned outside this crate that a sparsifier can hold without copying.
///
/// The sparsifier reads it through zero-copy views on every `step` (so it sees training updates) and
/// squashes into it in place (so the framework's model sees the sparse weights). Integrations such as
/// the candle one implement this.
///
/// ```
/// use std::sync::{Arc, Mutex};
/// use data_sparsifier::{tensor::ExternalTensor, DType, Mask, Result, Tensor, TensorView};
///
/// /// A toy external store: a Vec behind a mutex.
/// #[derive(Debug)]
/// struct VecStore(Mutex<Vec<f32>>);
/// impl ExternalTensor for VecStore {
///     fn shape(&self) -> Vec<usize> { vec![self.0.lock().unwrap().len()] }
///     fn dtype(&self) -> DType { DType::F32 }
///     fn read(&self, f: &mut dyn FnMut(TensorView<'_>) -> Result<()>) -> Result<()> {
///         let v = self.0.lock().unwrap();
///         let shape = [v.len()];
///         f(TensorView::new(&v[..], &shape)?)
///     }
///     fn apply_mask(&self, mask: &Mask) -> Result<()> {
///         mask.apply(&mut self.0.lock().unwrap()[..]);
///         Ok(())
///     }
///     fn assign(&self, t: &Tensor) -> Result<()> {
///         self.0.lock().unwrap().copy_from_slice(t.as_slice::<f32>().unwrap());
///         Ok(())
///     }
/// }
/// let store = VecStore(Mutex::new(vec![1.0, 2.0]));
/// let mut m = Mask::ones([2]);
/// m.set(0, false);
/// store.apply_mask(&m).unwrap();
/// assert_eq!(*store.0.lock().unwrap(), vec![0.0, 2.0]);
/// ```
pub trait ExternalTensor: Send + Sync + fmt::Debug {
    /// The current shape.
    fn shape(&self) -> Vec<usize>;
    /// The element type.
    fn dtype(&self) -> DType;
    /// Calls `f` once with a zero-copy view of the current values.
    fn read(&self, f: &mut dyn FnMut(TensorView<'_>) -> Result<()>) -> Result<()>;
    /// Zeroes, in place, every element whose mask bit is 0 (the mask has the data's shape).
    fn apply_mask(&self, mask: &Mask) -> Result<()>;
    /// Overwrites the values with `t` (same shape and dtype); used when loading a saved state.
    fn assign(&self, t: &Tensor) -> Result<()>;
}

/// The storage behind one entry.
///
/// ```
/// use data_sparsifier::{DType, tensor::Handle, Parameter, Tensor};
/// let p = Parameter::new(Tensor::zeros(DType::F32, [2, 3]));
/// let h = Handle::Native(p.clone());
/// assert_eq!((h.shape(), h.dtype()), (vec![2, 3], DType::F32));
/// assert!(h.as_parameter().unwrap().ptr_eq(&p));
/// ```
#[derive(Clone, Debug)]
pub enum Handle {
    /// Our own shared tensor.
    Native(Parameter),
    /// Another framework's storage.
    External(Arc<dyn ExternalTensor>),
}

impl Handle {
    /// The current shape.
    pub fn shape(&self) -> Vec<usize> {
        match self {
            Handle::Native(p) => p.shape(),
            Handle::External(e) => e.shape(),
        }
    }
    /// The element type.
    pub fn dtype(&self) -> DType {
        match self {
            Handle::Native(p) => p.dtype(),
            Handle::External(e) => e.dtype(),
        }
    }
    /// Runs `f` on a zero-copy view of the current values.
    ///
    /// ```
    /// use data_sparsifier::{tensor::Handle, Parameter, Tensor};
    /// let h = Handle::Native(Parameter::new(Tensor::from_vec(vec![1.0f32, -3.0], [2]).unwrap()));
    /// let sum = h.read(|v| Ok(v.as_slice::<f32>().unwrap().iter().sum::<f32>())).unwrap();
    /// assert_eq!(sum, -2.0);
    /// ```
    pub fn read<R>(&self, f: impl FnOnce(TensorView<'_>) -> Result<R>) -> Result<R> {
        match self {
            Handle::Native(p) => f(p.read().view()),
            Handle::External(e) => {
                let mut f = Some(f);
                let mut out = None;
                e.read(&mut |v| {
                    if let Some(f) = f.take() {
                        out = Some(f(v)?);
                    }
                    Ok(())
                })?;
                out.ok_or_else(|| crate::Error::External {
                    framework: "ExternalTensor",
                    message: "read() returned without calling back with a view; an \
                              implementation must call `f` exactly once"
                        .into(),
                })
            }
        }
    }
    /// A copy of the current values.
    ///
    /// ```
    /// use data_sparsifier::{tensor::Handle, Parameter, Tensor};
    /// let p = Parameter::new(Tensor::from_vec(vec![1.0f32], [1]).unwrap());
    /// let copy = Handle::Native(p.clone()).snapshot().unwrap();
    /// p.set(Tensor::from_vec(vec![2.0f32], [1]).unwrap());
    /// assert_eq!(copy.to_f64_vec(), vec![1.0]);
    /// ```
    pub fn snapshot(&self) -> Result<Tensor> {
        self.read(|v| Ok(v.to_tensor()))
    }
    /// Zeroes the masked-out elements in place.
    ///
    /// ```
    /// use data_sparsifier::{tensor::Handle, Mask, Parameter, Tensor};
    /// let p = Parameter::new(Tensor::from_vec(vec![1.0f32, 2.0], [2]).unwrap());
    /// let h = Handle::Native(p.clone());
    /// h.apply_mask(&Mask::from_dense_u8([2], &[1, 0]).unwrap()).unwrap();
    /// assert_eq!(p.read().to_f64_vec(), vec![1.0, 0.0]); // written through the shared handle
    /// assert!(h.apply_mask(&Mask::ones([3])).is_err());
    /// ```
    pub fn apply_mask(&self, mask: &Mask) -> Result<()> {
        match self {
            Handle::Native(p) => p.write().apply_mask(mask),
            Handle::External(e) => e.apply_mask(mask),
        }
    }
    /// Replaces the values. A native handle takes `t` whole (any shape); an external one must keep
    /// its shape and dtype.
    ///
    /// ```
    /// use data_sparsifier::{DType, tensor::Handle, Parameter, Tensor};
    /// let p = Parameter::new(Tensor::zeros(DType::F32, [2]));
    /// Handle::Native(p.clone()).set(Tensor::zeros(DType::F64, [4])).unwrap();
    /// assert_eq!((p.shape(), p.dtype()), (vec![4], DType::F64));
    /// ```
    pub fn set(&self, t: Tensor) -> Result<()> {
        match self {
            Handle::Native(p) => {
                p.set(t);
                Ok(())
            }
            Handle::External(e) => e.assign(&t),
        }
    }
    /// The native parameter, if this is one.
    ///
    /// ```
    /// use data_sparsifier::{DType, tensor::Handle, Parameter, Tensor};
    /// let p = Parameter::new(Tensor::zeros(DType::F32, [2]));
    /// assert!(Handle::Native(p.clone()).as_parameter().is_some_and(|q| q.ptr_eq(&p)));
    /// ```
    pub fn as_parameter(&self) -> Option<&Parameter> {
        match self {
            Handle::Native(p) => Some(p),
            Handle::External(_) => None,
        }
    }
}
