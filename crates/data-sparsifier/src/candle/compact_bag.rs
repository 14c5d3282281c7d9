//! An inference `EmbeddingBag` for candle models that reads a compact table directly.

use candle_core::{DType as CDType, Device, Module, Tensor as CTensor};

use crate::compact::{CompactEmbeddingBag as Bag, CompactTable};
use crate::embedding::{BagMode, Bags};
use crate::error::{Error, Result};

/// `torch.nn.EmbeddingBag` for candle inference, over a [`CompactTable`] (as read zero-copy from
/// a file `sparsify run --format compact [--quantize]` wrote): the table is never expanded, and
/// the output is a candle tensor on the chosen device.
///
/// The semantics are the crate's [`CompactEmbeddingBag`](crate::compact::CompactEmbeddingBag)'s,
/// the same as the dense [`EmbeddingBag`](crate::EmbeddingBag) over the expanded table: sum,
/// mean and max; offsets with `include_last_offset`, or fixed-size bags; `per_sample_weights`
/// (sum only); `padding_idx`; empty bags give zeros. There are no gradients: a compact table
/// is for inference (train the dense table, through [`crate::candle::EmbeddingBag`]).
///
/// As a candle [`Module`], `forward(xs)` takes a 2-D integer tensor `[batch, bag]` (each row a
/// bag, as PyTorch's 2-D input) and returns `[batch, embedding_dim]`.
///
/// ```
/// use candle_core::{Device, Module, Tensor};
/// use data_sparsifier::candle::CompactEmbeddingBag;
/// use data_sparsifier::compact::{CompactOptions, CompactTable};
/// use data_sparsifier::embedding::{BagMode, Bags};
/// use data_sparsifier::{Mask, Tensor as DsTensor};
///
/// let w = DsTensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0], [3, 2]).unwrap();
/// let mask = Mask::from_dense_u8([3, 2], &[1, 1, 0, 0, 1, 1]).unwrap(); // row 1 pruned
/// let table = CompactTable::encode(w.view(), &mask, &CompactOptions::default()).unwrap();
/// let bag = CompactEmbeddingBag::new(&table, BagMode::Sum, None, &Device::Cpu).unwrap();
/// let xs = Tensor::new(&[[0u32, 2], [1, 1]], &Device::Cpu).unwrap();
/// assert_eq!(bag.forward(&xs).unwrap().to_vec2::<f32>().unwrap(), vec![vec![6., 8.], vec![0., 0.]]);
/// let bags = Bags::Offsets { offsets: &[0, 1], include_last_offset: false };
/// let out = bag.forward_bags(&[2, 0, 1], bags, None).unwrap();
/// assert_eq!(out.to_vec2::<f32>().unwrap(), vec![vec![5., 6.], vec![1., 2.]]);
/// assert!(bag.forward_bags(&[3], Bags::Fixed { bag_size: 1 }, None).is_err()); // out of range
/// ```
#[derive(Debug, Clone)]
pub struct CompactEmbeddingBag<'t, 'a> {
    bag: Bag<'t, 'a>,
    device: Device,
}

impl<'t, 'a> CompactEmbeddingBag<'t, 'a> {
    /// A bag over `table` reducing by `mode`, skipping `padding_idx` (negative counts from the
    /// end), its outputs on `device`.
    pub fn new(
        table: &'t CompactTable<'a>,
        mode: BagMode,
        padding_idx: Option<i64>,
        device: &Device,
    ) -> Result<Self> {
        Ok(CompactEmbeddingBag {
            bag: Bag::new(table, mode, padding_idx)?,
            device: device.clone(),
        })
    }

    /// The crate's bag underneath (for `forward_into` and the other plain-slice calls).
    pub fn bag(&self) -> &Bag<'t, 'a> {
        &self.bag
    }

    /// Reduces each bag of `indices` (`bags`: offsets or a fixed size), each row times its
    /// `per_sample_weights` entry if given (sum only); `[num_bags, embedding_dim]` in the
    /// table's dtype, on the bag's device.
    pub fn forward_bags(
        &self,
        indices: &[i64],
        bags: Bags<'_>,
        per_sample_weights: Option<&[f64]>,
    ) -> Result<CTensor> {
        let out = self.bag.forward(indices, bags, per_sample_weights)?;
        super::to_candle(&out, &self.device)
    }
}

impl Module for CompactEmbeddingBag<'_, '_> {
    /// `xs`: a 2-D integer tensor `[batch, bag]`, one bag a row.
    fn forward(&self, xs: &CTensor) -> candle_core::Result<CTensor> {
        let err = |message: String| {
            candle_core::Error::wrap(Error::InvalidLookup {
                module: "EmbeddingBag",
                message,
            })
        };
        let (_, bag_size) = xs.dims2().map_err(|_| {
            err(format!(
                "the candle EmbeddingBag module takes a 2-D [batch, bag] tensor of indices, got shape {:?}",
                xs.dims()
            ))
        })?;
        if !matches!(xs.dtype(), CDType::U8 | CDType::U32 | CDType::I64) {
            return Err(err(format!(
                "indices must be an integer tensor (u8, u32 or i64), got {:?}",
                xs.dtype()
            )));
        }
        let indices = xs.to_dtype(CDType::I64)?.flatten_all()?.to_vec1::<i64>()?;
        if bag_size == 0 {
            return Err(err(
                "a [batch, 0] input has empty bags of no size; use forward_bags with offsets"
                    .into(),
            ));
        }
        self.forward_bags(&indices, Bags::Fixed { bag_size }, None)
            .map_err(candle_core::Error::wrap)
    }
}
