//! The kinds of data a sparsifier accepts: [`Data`] and its tag [`DataKind`].

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::embedding::{Embedding, EmbeddingBag};
use crate::tensor::{Parameter, Tensor};

/// What kind of data an entry is. A name keeps its kind: replacing it with another kind is an error.
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
}

impl Data {
    /// The kind tag.
    pub fn kind(&self) -> DataKind {
        match self {
            Data::Tensor(_) => DataKind::Tensor,
            Data::Parameter(_) => DataKind::Parameter,
            Data::Embedding(_) => DataKind::Embedding,
            Data::EmbeddingBag(_) => DataKind::EmbeddingBag,
        }
    }
    /// The shared handle the sparsifier will hold: a new one for a plain tensor, the caller's for the
    /// other kinds.
    pub(crate) fn into_handle(self) -> Parameter {
        match self {
            Data::Tensor(t) => Parameter::new(t).with_requires_grad(false),
            Data::Parameter(p) => p,
            Data::Embedding(e) => e.weight().clone(),
            Data::EmbeddingBag(e) => e.weight().clone(),
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
