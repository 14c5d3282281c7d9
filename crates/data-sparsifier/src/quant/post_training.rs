//! `post_training_sparse_quantize`: sparsify the embeddings of a model and quantize them to
//! PyTorch's 8-bit per-row form, in either order.

use super::pytorch::{to_f32, QuantizedEmbedding, QuantizedEmbeddingBag, QuantizedTable};
use super::QuantError;
use crate::data::{Data, DataKind};
use crate::embedding::{BagMode, Embedding, EmbeddingBag};
use crate::error::{Error, Result};
use crate::hooks::valid_name;
use crate::sparsifier::{DataSparsifier, UpdateMask, Version};
use crate::tensor::Tensor;

/// One module of a model, as [`post_training_sparse_quantize`] sees it. Only the embedding kinds
/// are quantized; [`Other`](EmbeddingModule::Other) data is skipped when all embeddings are
/// selected and refused when selected by name (PyTorch's exact type match).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum EmbeddingModule {
    /// Our `Embedding` (its weight is shared: `sparsify_first` squashes into it).
    Embedding(Embedding),
    /// Our `EmbeddingBag` (its weight is shared, its mode and padding row carry over).
    EmbeddingBag(EmbeddingBag),
    /// A `candle_nn::Embedding`, its storage shared.
    #[cfg(feature = "candle")]
    CandleEmbedding(candle_nn::Embedding),
    /// A candle [`EmbeddingBag`](crate::candle::EmbeddingBag), its storage shared.
    #[cfg(feature = "candle")]
    CandleEmbeddingBag(crate::candle::EmbeddingBag),
    /// Anything else (a linear layer's weight, ...): never quantized.
    Other(Data),
}

impl From<Embedding> for EmbeddingModule {
    fn from(e: Embedding) -> Self {
        EmbeddingModule::Embedding(e)
    }
}
impl From<EmbeddingBag> for EmbeddingModule {
    fn from(e: EmbeddingBag) -> Self {
        EmbeddingModule::EmbeddingBag(e)
    }
}
#[cfg(feature = "candle")]
impl From<candle_nn::Embedding> for EmbeddingModule {
    fn from(e: candle_nn::Embedding) -> Self {
        EmbeddingModule::CandleEmbedding(e)
    }
}
#[cfg(feature = "candle")]
impl From<crate::candle::EmbeddingBag> for EmbeddingModule {
    fn from(e: crate::candle::EmbeddingBag) -> Self {
        EmbeddingModule::CandleEmbeddingBag(e)
    }
}

/// What a selected module becomes: the data the sparsifier holds, and the quantized module's
/// kind (`None` for an embedding, `Some(mode)` for a bag) and padding row.
struct Selected {
    fqn: String,
    name: String,
    data: Data,
    bag: Option<BagMode>,
    padding_idx: Option<i64>,
}

impl EmbeddingModule {
    fn kind_name(&self) -> &'static str {
        match self {
            EmbeddingModule::Embedding(_) => "Embedding",
            EmbeddingModule::EmbeddingBag(_) => "EmbeddingBag",
            #[cfg(feature = "candle")]
            EmbeddingModule::CandleEmbedding(_) => "candle Embedding",
            #[cfg(feature = "candle")]
            EmbeddingModule::CandleEmbeddingBag(_) => "candle EmbeddingBag",
            EmbeddingModule::Other(d) => match d.kind() {
                DataKind::Tensor => "tensor",
                DataKind::Parameter => "parameter",
                DataKind::Embedding | DataKind::EmbeddingBag => {
                    "bare embedding weight (pass the module itself)"
                }
            },
        }
    }
    /// The sparsifier's data, bag mode and padding row, or `None` if this is not an embedding.
    fn select(&self, fqn: &str) -> Result<Option<Selected>> {
        let pad = |p: Option<usize>| p.map(|p| p as i64);
        let (data, bag, padding_idx) = match self {
            EmbeddingModule::Embedding(e) => (Data::from(e), None, pad(e.padding_idx())),
            EmbeddingModule::EmbeddingBag(e) => {
                (Data::from(e), Some(e.mode()), pad(e.padding_idx()))
            }
            #[cfg(feature = "candle")]
            EmbeddingModule::CandleEmbedding(e) => (crate::candle::embedding(e)?, None, None),
            #[cfg(feature = "candle")]
            EmbeddingModule::CandleEmbeddingBag(e) => (
                crate::candle::embedding_bag(e)?,
                Some(e.mode()),
                pad(e.padding_idx()),
            ),
            EmbeddingModule::Other(_) => return Ok(None),
        };
        Ok(Some(Selected {
            fqn: fqn.to_string(),
            name: valid_name(fqn),
            data,
            bag,
            padding_idx,
        }))
    }
}

/// A quantized module: what PyTorch's `convert` swaps an `Embedding` / `EmbeddingBag` for.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantizedModule {
    /// From an `Embedding`.
    Embedding(QuantizedEmbedding),
    /// From an `EmbeddingBag`.
    EmbeddingBag(QuantizedEmbeddingBag),
}

impl QuantizedModule {
    /// The quantized table.
    pub fn table(&self) -> &QuantizedTable {
        match self {
            QuantizedModule::Embedding(e) => e.table(),
            QuantizedModule::EmbeddingBag(e) => e.table(),
        }
    }
}

/// The options of [`post_training_sparse_quantize`].
#[derive(Debug, Clone, Copy)]
pub struct SparseQuantizeOptions<'a> {
    /// `true` (PyTorch's default): sparsify, squash, then quantize. `false`: quantize, dequantize,
    /// sparsify the dequantized tables, then re-quantize them with the first pass's scales and
    /// zero points.
    pub sparsify_first: bool,
    /// The modules to quantize, by their names in the model (with dots); `None` for every
    /// embedding, in model order.
    pub select: Option<&'a [&'a str]>,
}

impl Default for SparseQuantizeOptions<'_> {
    fn default() -> Self {
        SparseQuantizeOptions {
            sparsify_first: true,
            select: None,
        }
    }
}

/// PyTorch's `post_training_sparse_quantize(model, data_sparsifier_class, sparsify_first,
/// select_embeddings, **sparse_config)`: sparsifies the model's embeddings with `sparsifier`
/// (any rule and config; the names are the module names with `.` replaced by `_`) and quantizes
/// them to 8-bit per-row quint8 with float qparams. Returns `(sparsifier name, quantized module)`
/// for each selected module, in selection order; the sparsifier keeps the masks.
///
/// * `sparsify_first = true`: `add_data`, `step`, `squash_mask` (which writes the masked values
///   into the modules' own weights, as PyTorch's in-place model does), then quantize.
/// * `sparsify_first = false`: quantize the untouched weights, hand the dequantized tables to the
///   sparsifier, `step`, `squash_mask`, and re-quantize the masked tables with the first pass's
///   scales and zero points; the modules' weights are not modified.
///
/// Every selected table is checked for NaN and infinities before anything changes.
///
/// ```
/// use data_sparsifier::quant::{post_training_sparse_quantize, EmbeddingModule, SparseQuantizeOptions};
/// use data_sparsifier::{BagMode, DType, DataNormConfig, DataNormSparsifier, Embedding, EmbeddingBag};
/// let model: Vec<(&str, EmbeddingModule)> = vec![
///     ("emb", Embedding::new(10, 8, DType::F32, None, 1).unwrap().into()),
///     ("tower.bag", EmbeddingBag::new(20, 8, DType::F32, BagMode::Sum, None, 2).unwrap().into()),
/// ];
/// let mut sp = DataNormSparsifier::data_norm(DataNormConfig {
///     sparsity_level: 0.8,
///     sparse_block_shape: (1, 4),
///     ..Default::default()
/// })
/// .unwrap();
/// let q = post_training_sparse_quantize(&model, &mut sp, &SparseQuantizeOptions::default()).unwrap();
/// assert_eq!(q[1].0, "tower_bag");
/// assert_eq!(q[1].1.table().dims(), (20, 8));
/// assert!((sp.get_mask("tower_bag").unwrap().sparsity() - 0.8).abs() < 1e-9);
/// // Selected by name; a name the model does not have is an error.
/// let only = SparseQuantizeOptions { sparsify_first: false, select: Some(&["emb"]) };
/// let mut sp2 = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
/// assert_eq!(post_training_sparse_quantize(&model, &mut sp2, &only).unwrap().len(), 1);
/// let bad = SparseQuantizeOptions { sparsify_first: true, select: Some(&["nope"]) };
/// assert!(post_training_sparse_quantize(&model, &mut sp2, &bad).is_err());
/// ```
pub fn post_training_sparse_quantize<U: UpdateMask, N: AsRef<str>>(
    model: &[(N, EmbeddingModule)],
    sparsifier: &mut DataSparsifier<U>,
    options: &SparseQuantizeOptions<'_>,
) -> Result<Vec<(String, QuantizedModule)>> {
    let selected = select(model, options.select)?;
    // Check every table before anything changes: NaN and infinities cannot be quantized.
    let mut tables = Vec::with_capacity(selected.len());
    for s in &selected {
        let t = table_of(&s.name, &s.data)?;
        if let Some(i) = to_f32(&t).iter().position(|x| !x.is_finite()) {
            let cols = t.shape().get(1).copied().unwrap_or(1).max(1);
            let v = t.view().data().get_f64(i).unwrap_or(f64::NAN) as f32;
            return Err(QuantError::NonFinite {
                what: format!("module {:?} row {} (position = column)", s.fqn, i / cols),
                index: i % cols,
                value: v,
            }
            .into());
        }
        tables.push(t);
    }
    let names: Vec<&str> = selected.iter().map(|s| s.name.as_str()).collect();
    let quantized: Vec<QuantizedTable> = if options.sparsify_first {
        for s in &selected {
            sparsifier.add_data(&s.name, s.data.clone())?;
        }
        sparsifier.step()?;
        sparsifier.squash_mask(Some(&names), true)?;
        names
            .iter()
            .map(|n| QuantizedTable::quantize(n, &sparsifier.get_data(n, Version::Masked)?))
            .collect::<Result<_>>()?
    } else {
        let first: Vec<QuantizedTable> = names
            .iter()
            .zip(&tables)
            .map(|(n, t)| QuantizedTable::quantize(n, t))
            .collect::<Result<_>>()?;
        for (n, q) in names.iter().zip(&first) {
            sparsifier.add_data(n, q.dequantize())?;
        }
        sparsifier.step()?;
        sparsifier.squash_mask(Some(&names), true)?;
        names
            .iter()
            .zip(&first)
            .map(|(n, q)| {
                let masked = sparsifier.get_data(n, Version::Masked)?;
                QuantizedTable::quantize_with(n, &masked, q.scales(), q.zero_points())
            })
            .collect::<Result<_>>()?
    };
    selected
        .into_iter()
        .zip(quantized)
        .map(|(s, table)| {
            let module = match s.bag {
                None => QuantizedModule::Embedding(QuantizedEmbedding::new(table, s.padding_idx)?),
                Some(mode) => QuantizedModule::EmbeddingBag(QuantizedEmbeddingBag::new(
                    table,
                    mode,
                    s.padding_idx,
                )?),
            };
            Ok((s.name, module))
        })
        .collect()
}

/// The selected modules, checked: known names, embeddings only, no name twice (also after `.` is
/// replaced by `_`).
fn select<N: AsRef<str>>(
    model: &[(N, EmbeddingModule)],
    select: Option<&[&str]>,
) -> Result<Vec<Selected>> {
    let mut out: Vec<Selected> = Vec::new();
    match select {
        None => {
            for (fqn, m) in model {
                if let Some(s) = m.select(fqn.as_ref())? {
                    out.push(s);
                }
            }
        }
        Some(names) => {
            for &fqn in names {
                let Some((_, m)) = model.iter().find(|(n, _)| n.as_ref() == fqn) else {
                    return Err(Error::UnknownName {
                        name: fqn.to_string(),
                        known: model
                            .iter()
                            .map(|(n, _)| n.as_ref())
                            .collect::<Vec<_>>()
                            .join(", "),
                    });
                };
                match m.select(fqn)? {
                    Some(s) => out.push(s),
                    None => {
                        return Err(QuantError::NotAnEmbedding {
                            name: fqn.to_string(),
                            kind: m.kind_name(),
                        }
                        .into())
                    }
                }
            }
        }
    }
    for (i, s) in out.iter().enumerate() {
        if out[..i].iter().any(|o| o.name == s.name) {
            return Err(Error::DuplicateName {
                name: s.name.clone(),
                context: "the modules to quantize (names after '.' is replaced by '_')",
            });
        }
    }
    Ok(out)
}

/// A copy of a selected module's table, as stored (any float dtype).
fn table_of(name: &str, data: &Data) -> Result<Tensor> {
    let t = data.clone().into_handle().snapshot()?;
    super::pytorch::table_dims(name, t.shape())?;
    Ok(t)
}
