//! The kinds of data a sparsifier accepts: [`Data`] and its tag [`DataKind`].

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::embedding::{Embedding, EmbeddingBag};
use crate::handle::{ExternalTensor, Handle};
use crate::tensor::{Parameter, Tensor};
use std::sync::Arc;

/// What kind of data an entry is. A name keeps its kind: replacing it with another kind is an error.
///
/// ```
/// use data_sparsifier::{DType, DataKind, DataNormConfig, DataNormSparsifier, Parameter, Tensor};
/// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
/// sp.add_data("w", Parameter::new(Tensor::zeros(DType::F32, [4]))).unwrap();
/// assert_eq!(sp.kind("w").unwrap(), DataKind::Parameter);
/// // A name keeps its kind.
/// assert!(sp.add_data("w", Tensor::zeros(DType::F32, [4])).is_err());
/// assert_eq!(serde_json::to_string(&DataKind::EmbeddingBag).unwrap(), "\"embedding_bag\"");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataKind {
    /// A plain tensor, owned by the sparsifier.
    Tensor,
    /// A shared [`Parameter`] handle.
    Parameter,
    /// An [`Embedding`]'s weight.
    Embedding,
    /// An [`EmbeddingBag`]'s weight.
    EmbeddingBag,
}

impl DataKind {
    /// The kind's name as text.
    ///
    /// ```
    /// use data_sparsifier::DataKind;
    /// assert_eq!(DataKind::EmbeddingBag.as_str(), "embedding_bag");
    /// assert_eq!(DataKind::Tensor.to_string(), "tensor");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            DataKind::Tensor => "tensor",
            DataKind::Parameter => "parameter",
            DataKind::Embedding => "embedding",
            DataKind::EmbeddingBag => "embedding_bag",
        }
    }
}

impl fmt::Display for DataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Data that can be added to a sparsifier. Every `From` conversion below lets
/// [`DataSparsifier::add_data`](crate::DataSparsifier::add_data) take the value directly.
///
/// * A [`Tensor`] is moved in: the sparsifier owns it.
/// * A [`Parameter`] (or `&Parameter`) is shared: a squash writes into it in place.
/// * An [`Embedding`] or [`EmbeddingBag`] (or a reference) shares its weight handle: after a squash the
///   module's `forward` uses the sparsified weight.
///
/// ```
/// use data_sparsifier::{Data, DataKind, Embedding, Tensor};
/// let emb = Embedding::from_weight(Tensor::zeros(data_sparsifier::DType::F32, [4, 2])).unwrap();
/// assert_eq!(Data::from(&emb).kind(), DataKind::Embedding);
/// ```
#[derive(Debug, Clone)]
pub enum Data {
    /// A plain tensor.
    Tensor(Tensor),
    /// A shared parameter.
    Parameter(Parameter),
    /// An embedding table.
    Embedding(Embedding),
    /// An embedding-bag table.
    EmbeddingBag(EmbeddingBag),
    /// Storage owned by another framework (e.g. a candle `Var`), held without copying and reported
    /// as the given kind.
    External(DataKind, Arc<dyn ExternalTensor>),
}

impl Data {
    /// The kind tag.
    ///
    /// ```
    /// use data_sparsifier::{DType, Data, DataKind, Parameter, Tensor};
    /// let p = Parameter::new(Tensor::zeros(DType::F32, [2]));
    /// assert_eq!(Data::from(&p).kind(), DataKind::Parameter);
    /// assert_eq!(Data::from(Tensor::zeros(DType::F32, [2])).kind(), DataKind::Tensor);
    /// ```
    pub fn kind(&self) -> DataKind {
        match self {
            Data::Tensor(_) => DataKind::Tensor,
            Data::Parameter(_) => DataKind::Parameter,
            Data::Embedding(_) => DataKind::Embedding,
            Data::EmbeddingBag(_) => DataKind::EmbeddingBag,
            Data::External(kind, _) => *kind,
        }
    }
    /// The shared handle the sparsifier will hold: a new one for a plain tensor, the caller's for the
    /// other kinds.
    pub(crate) fn into_handle(self) -> Handle {
        match self {
            Data::Tensor(t) => Handle::Native(Parameter::new(t).with_requires_grad(false)),
            Data::Parameter(p) => Handle::Native(p),
            Data::Embedding(e) => Handle::Native(e.weight().clone()),
            Data::EmbeddingBag(e) => Handle::Native(e.weight().clone()),
            Data::External(_, store) => Handle::External(store),
        }
    }
}

impl From<Tensor> for Data {
    fn from(t: Tensor) -> Self {
        Data::Tensor(t)
    }
}
impl From<Parameter> for Data {
    fn from(p: Parameter) -> Self {
        Data::Parameter(p)
    }
}
impl From<&Parameter> for Data {
    fn from(p: &Parameter) -> Self {
        Data::Parameter(p.clone())
    }
}
impl From<Embedding> for Data {
    fn from(e: Embedding) -> Self {
        Data::Embedding(e)
    }
}
impl From<&Embedding> for Data {
    fn from(e: &Embedding) -> Self {
        Data::Embedding(e.clone())
    }
}
impl From<EmbeddingBag> for Data {
    fn from(e: EmbeddingBag) -> Self {
        Data::EmbeddingBag(e)
    }
}
impl From<&EmbeddingBag> for Data {
    fn from(e: &EmbeddingBag) -> Self {
        Data::EmbeddingBag(e.clone())
    }
}
