//! [`ArrayStore`]: a CPU `torch.Tensor` (or numpy array) held by the sparsifier without a copy,
//! through the library's [`ExternalTensor`] seam.
//!
//! The store keeps the Python object itself, not a pointer into it, and looks its storage up again
//! (`tensor.detach().numpy()`, a view) on every access. So `weight.data = ...` reassignments by the
//! caller are seen, as PyTorch's container sees them, and a squash writes into the tensor's own
//! storage. 16-bit floats are viewed as `int16` (numpy has no bfloat16) and reinterpreted with
//! bytemuck. The GIL is released while a kernel runs on the view.

use data_sparsifier::dtype::{bf16, f16};
use data_sparsifier::{
    tensor::ExternalTensor, tensor::Slice, tensor::Storage, DType, Error, Mask, Result, Tensor,
    TensorView,
};
use numpy::{PyReadonlyArrayDyn, PyReadwriteArrayDyn};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use std::fmt;

use crate::errors::from_py;

/// Whether the held object is a torch tensor or a numpy array.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavour {
    Torch,
    Numpy,
}

/// A Python array that the sparsifier reads and squashes in place.
pub(crate) struct ArrayStore {
    obj: Py<PyAny>,
    flavour: Flavour,
    /// How the data is named in errors.
    label: String,
}

impl fmt::Debug for ArrayStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArrayStore({}, {:?})", self.label, self.flavour)
    }
}

/// The dtype of a torch or numpy dtype name.
fn dtype_of(name: &str) -> Option<DType> {
    Some(match name {
        "torch.float32" | "float32" => DType::F32,
        "torch.float64" | "float64" => DType::F64,
        "torch.float16" | "float16" => DType::F16,
        "torch.bfloat16" | "bfloat16" => DType::BF16,
        _ => return None,
    })
}

impl ArrayStore {
    /// Checks `obj` (a CPU, contiguous, floating torch tensor or numpy array) and holds it.
    pub(crate) fn new(py: Python<'_>, obj: &Bound<'_, PyAny>, label: &str) -> PyResult<Self> {
        let torch = py.import("torch")?;
        let flavour = if obj.is_instance(&torch.getattr("Tensor")?)? {
            Flavour::Torch
        } else if obj.is_instance(&py.import("numpy")?.getattr("ndarray")?)? {
            Flavour::Numpy
        } else {
            return Err(PyTypeError::new_err(format!(
                "data {label:?}: specified data type {} not supported; pass a torch.Tensor, \
                 nn.Parameter, nn.Embedding, nn.EmbeddingBag or a numpy array",
                obj.get_type().name()?
            )));
        };
        let store = ArrayStore {
            obj: obj.clone().unbind(),
            flavour,
            label: label.to_string(),
        };
        // Fail now, not at the first step: the device, the dtype and the layout.
        store.numpy(py)?;
        Ok(store)
    }

    /// A zero-copy numpy view of the current storage (16-bit floats as int16) and the dtype.
    fn numpy<'py>(&self, py: Python<'py>) -> PyResult<(Bound<'py, PyAny>, DType)> {
        let obj = self.obj.bind(py);
        let label = &self.label;
        let dtype_name = obj.getattr("dtype")?.str()?.to_string();
        let dtype = dtype_of(&dtype_name).ok_or_else(|| {
            PyTypeError::new_err(format!(
                "data {label:?} has dtype {dtype_name}; only float32, float64, float16 and \
                 bfloat16 data can be sparsified: convert it with .float() first"
            ))
        })?;
        let arr = match self.flavour {
            Flavour::Torch => {
                let device = obj.getattr("device")?;
                let kind = device.getattr("type")?.str()?.to_string();
                if kind != "cpu" {
                    return Err(PyValueError::new_err(format!(
                        "data {label:?} is on device {}; the sparsifier reads tensors in place \
                         on the CPU only: move it with .cpu() (and back with .to(device) after \
                         squash_mask)",
                        device.str()?
                    )));
                }
                if !obj.call_method0("is_contiguous")?.extract::<bool>()? {
                    return Err(PyValueError::new_err(format!(
                        "data {label:?} is not contiguous; the sparsifier reads and squashes the \
                         tensor's own storage: pass tensor.contiguous() (a copy, so keep that copy \
                         in your model)"
                    )));
                }
                let mut t = obj.call_method0("detach")?;
                if matches!(dtype, DType::F16 | DType::BF16) {
                    t = t.call_method1("view", (py.import("torch")?.getattr("int16")?,))?;
                }
                t.call_method0("numpy")?
            }
            Flavour::Numpy => {
                let flags = obj.getattr("flags")?;
                if !flags.get_item("C_CONTIGUOUS")?.extract::<bool>()? {
                    return Err(PyValueError::new_err(format!(
                        "data {label:?} is not C-contiguous; pass numpy.ascontiguousarray(a) (a \
                         copy, so keep that copy)"
                    )));
                }
                if dtype == DType::F16 {
                    obj.call_method1("view", (py.import("numpy")?.getattr("int16")?,))?
                } else {
                    obj.clone()
                }
            }
        };
        Ok((arr, dtype))
    }

    fn shape_of(arr: &Bound<'_, PyAny>) -> PyResult<Vec<usize>> {
        arr.getattr("shape")?.extract()
    }

    fn read_py(
        &self,
        py: Python<'_>,
        f: &mut dyn FnMut(TensorView<'_>) -> Result<()>,
    ) -> PyResult<Result<()>> {
        let (arr, dtype) = self.numpy(py)?;
        let shape = Self::shape_of(&arr)?;
        Ok(match dtype {
            DType::F32 => {
                let ro = arr.extract::<PyReadonlyArrayDyn<'_, f32>>()?;
                released(py, Slice::F32(contiguous(ro.as_slice())?), &shape, f)
            }
            DType::F64 => {
                let ro = arr.extract::<PyReadonlyArrayDyn<'_, f64>>()?;
                released(py, Slice::F64(contiguous(ro.as_slice())?), &shape, f)
            }
            DType::F16 => {
                let ro = arr.extract::<PyReadonlyArrayDyn<'_, i16>>()?;
                let s: &[f16] = bytemuck::cast_slice(contiguous(ro.as_slice())?);
                released(py, Slice::F16(s), &shape, f)
            }
            DType::BF16 => {
                let ro = arr.extract::<PyReadonlyArrayDyn<'_, i16>>()?;
                let s: &[bf16] = bytemuck::cast_slice(contiguous(ro.as_slice())?);
                released(py, Slice::BF16(s), &shape, f)
            }
        })
    }

    /// Runs `w` on a mutable, zero-copy view of the storage, with the GIL released.
    fn write_py(&self, py: Python<'_>, w: Writer<'_>) -> PyResult<Result<()>> {
        let (arr, dtype) = self.numpy(py)?;
        Ok(match dtype {
            DType::F32 => {
                let mut rw = arr.extract::<PyReadwriteArrayDyn<'_, f32>>()?;
                let s = contiguous(rw.as_slice_mut())?;
                py.allow_threads(|| w.run(s))
            }
            DType::F64 => {
                let mut rw = arr.extract::<PyReadwriteArrayDyn<'_, f64>>()?;
                let s = contiguous(rw.as_slice_mut())?;
                py.allow_threads(|| w.run(s))
            }
            DType::F16 => {
                let mut rw = arr.extract::<PyReadwriteArrayDyn<'_, i16>>()?;
                let s: &mut [f16] = bytemuck::cast_slice_mut(contiguous(rw.as_slice_mut())?);
                py.allow_threads(|| w.run(s))
            }
            DType::BF16 => {
                let mut rw = arr.extract::<PyReadwriteArrayDyn<'_, i16>>()?;
                let s: &mut [bf16] = bytemuck::cast_slice_mut(contiguous(rw.as_slice_mut())?);
                py.allow_threads(|| w.run(s))
            }
        })
    }

    fn with_gil<R>(&self, f: impl FnOnce(Python<'_>) -> PyResult<Result<R>>) -> Result<R> {
        Python::with_gil(|py| f(py).map_err(from_py)?).map_err(|e| e.with_data(&self.label))
    }
}

fn contiguous<T>(s: std::result::Result<T, numpy::NotContiguousError>) -> PyResult<T> {
    s.map_err(|e| PyValueError::new_err(format!("{e}: pass a contiguous tensor")))
}

/// What a write does with the mutable slice.
enum Writer<'a> {
    Mask(&'a Mask),
    Copy(&'a Tensor),
}

impl Writer<'_> {
    fn run<T: data_sparsifier::Element>(&self, dst: &mut [T]) -> Result<()> {
        match self {
            Writer::Mask(m) => {
                if m.len() != dst.len() {
                    return Err(Error::ShapeMismatch {
                        what: "the mask and the data being squashed".into(),
                        expected: vec![dst.len()],
                        actual: m.shape().to_vec(),
                    });
                }
                m.apply(dst);
                Ok(())
            }
            Writer::Copy(t) => {
                let src: &[u8] = t.as_bytes();
                let dst: &mut [u8] = bytemuck::cast_slice_mut(dst);
                if src.len() != dst.len() {
                    return Err(Error::ShapeMismatch {
                        what: "a loaded tensor and the held data".into(),
                        expected: vec![dst.len()],
                        actual: t.shape().to_vec(),
                    });
                }
                dst.copy_from_slice(src);
                Ok(())
            }
        }
    }
}

/// A `Send` wrapper for the library's read callback, which the `ExternalTensor` trait passes as a
/// plain `&mut dyn FnMut` (no `Send` bound).
struct AssertSend<T>(T);
// SAFETY: `allow_threads` runs its closure on the calling thread; it only releases the GIL. pyo3
// asks for `Send` so that no GIL-bound Python reference is used while the GIL is released. The
// callbacks passed here run our kernels on plain slices (DataNorm) or reacquire the GIL with
// `Python::with_gil` before touching Python (the Python update_mask rule), so no GIL-bound
// reference is used without the GIL. Releasing the GIL while a kernel runs is a requirement of the
// bindings (other Python threads keep running), and the trait signature leaves no safe way.
unsafe impl<T> Send for AssertSend<T> {}

fn released(
    py: Python<'_>,
    data: Slice<'_>,
    shape: &[usize],
    f: &mut dyn FnMut(TensorView<'_>) -> Result<()>,
) -> Result<()> {
    let view = TensorView::from_slice(data, shape)?;
    let f = AssertSend(f);
    py.allow_threads(move || {
        let f = f;
        (f.0)(view)
    })
}

impl ExternalTensor for ArrayStore {
    fn shape(&self) -> Vec<usize> {
        Python::with_gil(|py| self.obj.bind(py).getattr("shape")?.extract()).unwrap_or_default()
    }
    fn dtype(&self) -> DType {
        Python::with_gil(|py| {
            let name = self.obj.bind(py).getattr("dtype")?.str()?.to_string();
            PyResult::Ok(dtype_of(&name).unwrap_or(DType::F32))
        })
        .unwrap_or(DType::F32)
    }
    fn read(&self, f: &mut dyn FnMut(TensorView<'_>) -> Result<()>) -> Result<()> {
        self.with_gil(|py| self.read_py(py, f))
    }
    fn apply_mask(&self, mask: &Mask) -> Result<()> {
        self.with_gil(|py| self.write_py(py, Writer::Mask(mask)))
    }
    fn assign(&self, t: &Tensor) -> Result<()> {
        let (shape, dtype) = (self.shape(), self.dtype());
        if t.shape() != shape.as_slice() || t.dtype() != dtype {
            return Err(Error::ShapeMismatch {
                what: format!(
                    "loaded data for {:?} (dtype {} vs {dtype})",
                    self.label,
                    t.dtype()
                ),
                expected: shape,
                actual: t.shape().to_vec(),
            });
        }
        self.with_gil(|py| self.write_py(py, Writer::Copy(t)))
    }
}

/// A library tensor as a new numpy array of its dtype (16-bit floats as int16 bits, with the dtype
/// name beside it so the Python layer can view it back).
pub(crate) fn tensor_to_numpy(py: Python<'_>, t: Tensor) -> PyResult<(Py<PyAny>, &'static str)> {
    use numpy::{IntoPyArray, PyArrayMethods};
    let shape = t.shape().to_vec();
    let (arr, name): (Bound<'_, PyAny>, _) = match t.into_storage() {
        Storage::F32(v) => (v.into_pyarray(py).reshape(shape)?.into_any(), "float32"),
        Storage::F64(v) => (v.into_pyarray(py).reshape(shape)?.into_any(), "float64"),
        Storage::F16(v) => {
            let bits: Vec<i16> = bytemuck::cast_vec(v);
            (bits.into_pyarray(py).reshape(shape)?.into_any(), "float16")
        }
        Storage::BF16(v) => {
            let bits: Vec<i16> = bytemuck::cast_vec(v);
            (bits.into_pyarray(py).reshape(shape)?.into_any(), "bfloat16")
        }
    };
    Ok((arr.unbind(), name))
}

/// A copy of a Python array as a library tensor (what a loaded state dict holds).
pub(crate) fn tensor_from_py(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    label: &str,
) -> PyResult<Tensor> {
    let store = ArrayStore::new(py, obj, label)?;
    let mut out = None;
    let r = store.read_py(py, &mut |v| {
        out = Some(v.to_tensor());
        Ok(())
    })?;
    r.map_err(crate::errors::to_py)?;
    out.ok_or_else(|| PyValueError::new_err("no data read"))
}
