//! [candle](https://github.com/huggingface/candle) integration (cargo feature `candle`): sparsify a
//! candle model's own weights, without copying them.
//!
//! * [`var`], [`tensor`], [`embedding`] and [`embedding_bag`] wrap a candle `Var`, `Tensor`,
//!   `candle_nn::Embedding` weight or [`EmbeddingBag`] weight as [`Data`] for
//!   [`DataSparsifier::add_data`]. The sparsifier then holds the **same storage** as the model
//!   ([`CandleTensor`], an [`ExternalTensor`]):
//!   * every `step` reads the current values zero-copy (`storage_and_layout()` → CPU storage
//!     slice, honouring the layout's start offset; a strided layout is gathered into a temporary),
//!     so it sees the optimizer's updates;
//!   * a broadcast view (stride 0 on a dimension of size > 1), whose elements share storage cells,
//!     is refused: a squash could not write `mask · data` into it;
//!   * `squash_mask` zeroes the pruned elements **in place** (a candle `InplaceOp1`), so the
//!     model's next `forward`, the `Var` and the `VarMap` all see the sparse weights.
//! * [`masked`] gives `mask · data` back as a new candle tensor, [`mask_tensor`] the mask as a 0/1
//!   tensor (multiply a weight by it inside `forward` to train through the mask).
//! * [`EmbeddingBag`]: PyTorch's `nn.EmbeddingBag` (sum and mean, offsets, `per_sample_weights`)
//!   built from candle ops, so it trains with candle's autograd.
//! * [`Model`] is implemented for `candle_nn::VarMap`, so the [`hooks`](crate::hooks) work on candle
//!   models.
//!
//! **Dtypes.** `f32`, `f64`, `f16` and `bf16` tensors are accepted; other candle dtypes are an
//! [`Error::UnsupportedDType`]. For half-precision data the [`DataNorm`](crate::norm::DataNorm)
//! block norms accumulate in `f32`, and so does [`EmbeddingBag`]'s reduction. candle's own `sum`
//! (and `index_add`) on an `f16`/`bf16` tensor accumulates in half precision, so a norm computed
//! with candle ops on half tensors can differ from the sparsifier's: convert to `f32` first.
//!
//! **Devices.** Only CPU storage can be read and written in place. A tensor on a CUDA or Metal
//! device is an [`Error::External`] saying so (move it with `to_device(&Device::Cpu)`).
//!
//! ```
//! use data_sparsifier::SquashOptions;
//! use candle_core::{DType, Device, Var};
//! use data_sparsifier::norm::{DataNormConfig, DataNormSparsifier};
//!
//! let w = Var::randn(0f32, 1.0, (8, 8), &Device::Cpu).unwrap();
//! let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
//! sp.add_data("w", data_sparsifier::candle::var(&w).unwrap()).unwrap();
//! sp.step().unwrap();
//! sp.squash_mask(None, SquashOptions::default()).unwrap();
//! // The Var itself now holds the sparse weights: half of the (1, 4) blocks are zero.
//! let zeros = w.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().filter(|x| **x == 0.0).count();
//! assert_eq!(zeros, 32);
//! ```

mod compact_bag;
mod embedding_bag;

use std::fmt;
use std::sync::Arc;

use candle_core::{backend::BackendStorage, CpuStorage, Device, InplaceOp1, Layout, Storage};

use crate::data::{Data, DataKind};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::handle::ExternalTensor;
use crate::hooks::Model;
use crate::mask::Mask;
use crate::sparsifier::{DataSparsifier, UpdateMask, Version};
use crate::tensor::{Tensor, TensorView, TypedStorage};

pub use compact_bag::CompactEmbeddingBag;
pub use embedding_bag::EmbeddingBag;

const FRAMEWORK: &str = "candle";

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Foreign {
            framework: FRAMEWORK,
            source: Box::new(e),
        }
    }
}

fn external(message: impl Into<String>) -> Error {
    Error::External {
        framework: FRAMEWORK,
        message: message.into(),
    }
}

/// Our dtype for a candle dtype (floats only).
pub fn dtype_from_candle(dtype: candle_core::DType) -> Result<DType> {
    match dtype {
        candle_core::DType::F32 => Ok(DType::F32),
        candle_core::DType::F64 => Ok(DType::F64),
        candle_core::DType::F16 => Ok(DType::F16),
        candle_core::DType::BF16 => Ok(DType::BF16),
        other => Err(Error::UnsupportedDType {
            what: "candle tensor".into(),
            dtype: format!("{other:?}"),
        }),
    }
}

/// The candle dtype for one of ours.
pub fn dtype_to_candle(dtype: DType) -> candle_core::DType {
    match dtype {
        DType::F32 => candle_core::DType::F32,
        DType::F64 => candle_core::DType::F64,
        DType::F16 => candle_core::DType::F16,
        DType::BF16 => candle_core::DType::BF16,
    }
}

fn check_cpu(t: &candle_core::Tensor) -> Result<()> {
    match t.device() {
        Device::Cpu => Ok(()),
        other => Err(external(format!(
            "the tensor is on {:?}; the data sparsifier reads and squashes CPU storage in place only: \
             move it with `to_device(&Device::Cpu)`, sparsify, and move it back",
            other.location()
        ))),
    }
}

/// Refuses a layout in which several elements share one storage cell: stride 0 on a dimension of
/// more than one element (a `broadcast_as` / `expand` view). A squash would write such a cell once
/// per element, and the result would not be `mask · data`.
fn check_no_aliasing(t: &candle_core::Tensor) -> Result<()> {
    let dims = t.dims();
    let stride = t.stride();
    match dims.iter().zip(stride).position(|(&n, &s)| n > 1 && s == 0) {
        None => Ok(()),
        Some(d) => Err(external(format!(
            "the {:?} candle tensor of shape {dims:?} has stride 0 on dim {d} (strides {stride:?}): \
             it is a broadcast view whose elements share storage, so a squash would write the same \
             cell for several elements and the result would not be mask · data; pass a tensor that \
             owns its elements, `t.contiguous()?` or `t.copy()?` (the sparsifier then reads and \
             squashes that copy, not the broadcast source)",
            t.dtype()
        ))),
    }
}

/// Storage offsets of the elements of a strided layout, in row-major logical order.
fn strided_offsets(layout: &Layout) -> impl Iterator<Item = usize> + '_ {
    let dims = layout.dims();
    let stride = layout.stride();
    let n: usize = dims.iter().product();
    let mut idx = vec![0usize; dims.len()];
    let mut offset = layout.start_offset();
    (0..n).map(move |k| {
        let here = offset;
        if k + 1 < n {
            // odometer increment
            for d in (0..dims.len()).rev() {
                idx[d] += 1;
                offset += stride[d];
                if idx[d] < dims[d] {
                    break;
                }
                offset -= stride[d] * dims[d];
                idx[d] = 0;
            }
        }
        here
    })
}

/// A candle tensor (or `Var`) held by a sparsifier without copying: the [`ExternalTensor`] of the
/// candle integration. Cloning it shares the storage, as cloning a candle tensor does.
#[derive(Clone)]
pub struct CandleTensor {
    tensor: candle_core::Tensor,
}

impl CandleTensor {
    /// Wraps a tensor, sharing its storage. It must live on the CPU, have a float dtype, and own
    /// each of its elements: a broadcast view (stride 0 on a dimension of size > 1, from
    /// `broadcast_as`, `expand`, …) is an [`Error::External`]; pass `t.contiguous()?` instead.
    /// Other strided views (a transpose, a `narrow`) are fine.
    pub fn new(t: &candle_core::Tensor) -> Result<Self> {
        check_cpu(t)?;
        dtype_from_candle(t.dtype())?;
        check_no_aliasing(t)?;
        Ok(CandleTensor { tensor: t.clone() })
    }
    /// The wrapped tensor (sharing the storage).
    pub fn tensor(&self) -> &candle_core::Tensor {
        &self.tensor
    }
    /// As [`Data`] of the given kind.
    pub fn into_data(self, kind: DataKind) -> Data {
        Data::External(kind, Arc::new(self))
    }
}

impl fmt::Debug for CandleTensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CandleTensor({:?}, {:?}, {:?})",
            self.tensor.dtype(),
            self.tensor.dims(),
            self.tensor.device().location()
        )
    }
}

fn view_of<T: TypedStorage + Copy>(
    v: &[T],
    layout: &Layout,
    f: &mut dyn FnMut(TensorView<'_>) -> Result<()>,
) -> Result<()> {
    let shape = layout.dims();
    match layout.contiguous_offsets() {
        Some((a, b)) => f(TensorView::new(&v[a..b], shape)?),
        None => {
            let tmp: Vec<T> = strided_offsets(layout).map(|o| v[o]).collect();
            f(TensorView::new(&tmp, shape)?)
        }
    }
}

/// Zeroes the masked-out elements of a CPU storage, through the layout.
struct ApplyMask<'a>(&'a Mask);

fn mask_into<T: Element>(v: &mut [T], layout: &Layout, mask: &Mask) {
    match layout.contiguous_offsets() {
        Some((a, b)) => mask.apply(&mut v[a..b]),
        None => {
            for (i, o) in strided_offsets(layout).enumerate() {
                if !mask.get(i) {
                    v[o] = T::ZERO;
                }
            }
        }
    }
}

impl InplaceOp1 for ApplyMask<'_> {
    fn name(&self) -> &'static str {
        "data-sparsifier-apply-mask"
    }
    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        match storage {
            CpuStorage::F32(v) => mask_into(v, layout, self.0),
            CpuStorage::F64(v) => mask_into(v, layout, self.0),
            CpuStorage::F16(v) => mask_into(v, layout, self.0),
            CpuStorage::BF16(v) => mask_into(v, layout, self.0),
            other => candle_core::bail!("cannot apply a mask to {:?} data", other.dtype()),
        }
        Ok(())
    }
}

/// Overwrites a CPU storage with a tensor's values, through the layout.
struct Assign<'a>(&'a Tensor);

fn assign_into<T: TypedStorage + Copy>(
    v: &mut [T],
    layout: &Layout,
    src: &Tensor,
) -> candle_core::Result<()> {
    let Some(src) = src.as_slice::<T>() else {
        candle_core::bail!("dtype mismatch in assign");
    };
    match layout.contiguous_offsets() {
        Some((a, b)) => v[a..b].copy_from_slice(src),
        None => {
            for (o, &x) in strided_offsets(layout).zip(src) {
                v[o] = x;
            }
        }
    }
    Ok(())
}

impl InplaceOp1 for Assign<'_> {
    fn name(&self) -> &'static str {
        "data-sparsifier-assign"
    }
    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        match storage {
            CpuStorage::F32(v) => assign_into(v, layout, self.0),
            CpuStorage::F64(v) => assign_into(v, layout, self.0),
            CpuStorage::F16(v) => assign_into(v, layout, self.0),
            CpuStorage::BF16(v) => assign_into(v, layout, self.0),
            other => candle_core::bail!("cannot assign to {:?} data", other.dtype()),
        }
    }
}

impl ExternalTensor for CandleTensor {
    fn shape(&self) -> Vec<usize> {
        self.tensor.dims().to_vec()
    }
    fn dtype(&self) -> DType {
        // Checked at construction.
        dtype_from_candle(self.tensor.dtype()).unwrap_or(DType::F32)
    }
    fn read(&self, f: &mut dyn FnMut(TensorView<'_>) -> Result<()>) -> Result<()> {
        check_cpu(&self.tensor)?;
        let (storage, layout) = self.tensor.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            return Err(external("the tensor's storage is not on the CPU"));
        };
        match cpu {
            CpuStorage::F32(v) => view_of(v, layout, f),
            CpuStorage::F64(v) => view_of(v, layout, f),
            CpuStorage::F16(v) => view_of(v, layout, f),
            CpuStorage::BF16(v) => view_of(v, layout, f),
            other => Err(Error::UnsupportedDType {
                what: "candle tensor".into(),
                dtype: format!("{:?}", other.dtype()),
            }),
        }
    }
    fn apply_mask(&self, mask: &Mask) -> Result<()> {
        check_cpu(&self.tensor)?;
        mask.check_shape("candle tensor", self.tensor.dims())?;
        self.tensor.inplace_op1(&ApplyMask(mask))?;
        Ok(())
    }
    fn assign(&self, t: &Tensor) -> Result<()> {
        check_cpu(&self.tensor)?;
        if t.shape() != self.tensor.dims() {
            return Err(Error::ShapeMismatch {
                what: "values assigned to a candle tensor".into(),
                expected: self.tensor.dims().to_vec(),
                actual: t.shape().to_vec(),
            });
        }
        if t.dtype() != self.dtype() {
            return Err(Error::DTypeMismatch {
                what: "values assigned to a candle tensor".into(),
                expected: self.dtype(),
                actual: t.dtype(),
            });
        }
        self.tensor.inplace_op1(&Assign(t))?;
        Ok(())
    }
}

/// A candle `Var` as data of kind [`DataKind::Parameter`], sharing its storage.
pub fn var(v: &candle_core::Var) -> Result<Data> {
    Ok(CandleTensor::new(v.as_tensor())?.into_data(DataKind::Parameter))
}

/// A candle tensor as data of kind [`DataKind::Tensor`], sharing its storage (a squash writes into
/// it, and into every tensor sharing that storage).
pub fn tensor(t: &candle_core::Tensor) -> Result<Data> {
    Ok(CandleTensor::new(t)?.into_data(DataKind::Tensor))
}

/// A `candle_nn::Embedding`'s weight as data of kind [`DataKind::Embedding`], sharing its storage:
/// after a squash the module's `forward` uses the sparse table.
pub fn embedding(e: &candle_nn::Embedding) -> Result<Data> {
    Ok(CandleTensor::new(e.embeddings())?.into_data(DataKind::Embedding))
}

/// An [`EmbeddingBag`]'s weight as data of kind [`DataKind::EmbeddingBag`], sharing its storage.
pub fn embedding_bag(e: &EmbeddingBag) -> Result<Data> {
    Ok(CandleTensor::new(e.weight())?.into_data(DataKind::EmbeddingBag))
}

/// Converts (copies) one of our tensors to a candle tensor on `device`.
pub fn to_candle(t: &Tensor, device: &Device) -> Result<candle_core::Tensor> {
    let shape = t.shape().to_vec();
    let out = crate::with_dtype!(t.dtype(), T => {
        candle_core::Tensor::from_slice(t.as_slice::<T>().unwrap_or_default(), shape, device)?
    });
    Ok(out)
}

/// Converts (copies) a candle tensor to one of ours. Any device; float dtypes only.
pub fn from_candle(t: &candle_core::Tensor) -> Result<Tensor> {
    let dtype = dtype_from_candle(t.dtype())?;
    let flat = t.flatten_all()?.to_device(&Device::Cpu)?;
    let shape = t.dims().to_vec();
    crate::with_dtype!(dtype, T => Tensor::from_vec(flat.to_vec1::<T>()?, shape))
}

/// `mask · data` of `name`, as a new candle tensor on `device`.
pub fn masked<U: UpdateMask>(
    sparsifier: &DataSparsifier<U>,
    name: &str,
    device: &Device,
) -> Result<candle_core::Tensor> {
    to_candle(&sparsifier.get_data(name, Version::Masked)?, device)
}

/// The mask as a 0/1 candle tensor of the data's shape: `weight.mul(&mask_tensor(..))` inside a
/// forward pass trains through the mask (the parametrization PyTorch uses before a squash).
pub fn mask_tensor(
    mask: &Mask,
    dtype: candle_core::DType,
    device: &Device,
) -> Result<candle_core::Tensor> {
    let t = candle_core::Tensor::from_vec(mask.to_dense_u8(), mask.shape().to_vec(), device)?;
    Ok(t.to_dtype(dtype)?)
}

impl Model for candle_nn::VarMap {
    /// Every `Var`, sorted by name, sharing its storage.
    fn named_parameters(&self) -> Result<Vec<(String, Data)>> {
        let data = self
            .data()
            .lock()
            .map_err(|_| external("the VarMap's lock is poisoned"))?;
        let mut vars: Vec<(&String, &candle_core::Var)> = data.iter().collect();
        vars.sort_by(|a, b| a.0.cmp(b.0));
        vars.into_iter()
            .map(|(n, v)| Ok((n.clone(), var(v)?)))
            .collect()
    }
    /// A new `VarMap` whose `Var`s hold copies of the values.
    fn deep_copy(&self) -> Result<Self> {
        let copy = candle_nn::VarMap::new();
        {
            let src = self
                .data()
                .lock()
                .map_err(|_| external("the VarMap's lock is poisoned"))?;
            let mut dst = copy
                .data()
                .lock()
                .map_err(|_| external("the VarMap's lock is poisoned"))?;
            for (n, v) in src.iter() {
                // `detach` shares the storage; `from_tensor` of a non-variable copies it.
                dst.insert(
                    n.clone(),
                    candle_core::Var::from_tensor(&v.as_detached_tensor())?,
                );
            }
        }
        Ok(copy)
    }
}
