//! The one error type of the library.
//!
//! Every variant names the data it is about (where there is one), the offending value, and what to do
//! about it. Nothing in this crate panics on user input; it returns one of these instead.

use crate::dtype::DType;

/// Everything that can go wrong in this crate.
///
/// ```
/// use data_sparsifier::{Error, Tensor};
/// let err = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [2, 2]).unwrap_err();
/// assert!(matches!(err, Error::ShapeMismatch { .. }));
/// assert!(err.to_string().contains("[2, 2]"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A data name is empty, contains '.', or is otherwise unusable.
    #[error("invalid data name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected and how to fix it.
        reason: &'static str,
    },

    /// No data of that name is held by the sparsifier.
    #[error("no data named {name:?} in the sparsifier (known names: {known})")]
    UnknownName {
        /// The name that was asked for.
        name: String,
        /// The names that do exist, comma separated.
        known: String,
    },

    /// A name is being replaced with data of a different kind (e.g. a parameter by an embedding).
    #[error("data {name:?} is a {existing}; it cannot be replaced by a {new}: remove it first or use another name")]
    KindChange {
        /// The data name.
        name: String,
        /// The kind held now.
        existing: &'static str,
        /// The kind offered.
        new: &'static str,
    },

    /// The mask of `name` was squashed into its data, so the original values no longer exist.
    #[error("mask of {name:?} was squashed: the original (unmasked) data no longer exists; read the squashed data with Version::Masked, or remove_data({name:?}) and add the data again to start over")]
    Squashed {
        /// The data name.
        name: String,
    },

    /// A name is given twice where each must appear once.
    #[error("{name:?} appears twice in {context}: give each name once")]
    DuplicateName {
        /// The repeated name.
        name: String,
        /// Where it was repeated.
        context: &'static str,
    },

    /// Two shapes that must agree do not.
    #[error("shape mismatch for {what}: expected {expected:?}, got {actual:?}")]
    ShapeMismatch {
        /// What is being checked (a data name, "mask", "tensor from_vec", ...).
        what: String,
        /// The shape that was required.
        expected: Vec<usize>,
        /// The shape that was given.
        actual: Vec<usize>,
    },

    /// The data has more dimensions than the sparsifier supports.
    #[error("data {name:?} has shape {shape:?} ({} dims); this sparsifier supports 0-, 1- and 2-D data only: reshape it to 2-D (rows, cols) first", shape.len())]
    UnsupportedShape {
        /// The data name.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
    },

    /// Two dtypes that must agree do not.
    #[error("dtype mismatch for {what}: expected {expected}, got {actual}")]
    DTypeMismatch {
        /// What is being checked.
        what: String,
        /// The dtype that was required.
        expected: DType,
        /// The dtype that was given.
        actual: DType,
    },

    /// A dtype name or safetensors dtype that this crate does not handle (only floats are supported).
    #[error(
        "unsupported dtype {dtype} for {what}: only F32, F64, F16 and BF16 data can be sparsified"
    )]
    UnsupportedDType {
        /// What carries it (a tensor name, a file).
        what: String,
        /// The dtype as written.
        dtype: String,
    },

    /// A configuration value is out of its valid range.
    #[error("invalid config for {name:?}: {key} = {value}: {expected}")]
    InvalidConfig {
        /// The data name, or "defaults".
        name: String,
        /// The config key.
        key: &'static str,
        /// The rejected value, as text.
        value: String,
        /// What would be valid.
        expected: String,
    },

    /// A config names a key the rule does not have.
    #[error("invalid config for {name:?}: unknown key `{key}`; the keys are {known}")]
    UnknownConfigKey {
        /// The data name, or "defaults".
        name: String,
        /// The unknown key.
        key: String,
        /// The rule's keys.
        known: String,
    },

    /// A config value does not have the type the rule's config needs.
    #[error("invalid config for {name:?} (rule {rule}): {source}")]
    ConfigValue {
        /// The data name, or "defaults".
        name: String,
        /// The rule's kind.
        rule: String,
        /// The decoding error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// No rule of that kind is registered.
    #[error("unknown rule {kind:?}: the registered rules are {known}")]
    UnknownRule {
        /// The kind asked for.
        kind: String,
        /// The registered kinds.
        known: String,
    },

    /// The data contains NaN where NaN is not accepted.
    #[error("data {name:?} contains NaN at flat index {index} (row {row}, col {col}): clean the data, or set nan_policy = \"rank_last\" to keep NaN blocks as PyTorch does")]
    NanInData {
        /// The data name.
        name: String,
        /// Flat (row-major) index of the first NaN.
        index: usize,
        /// Its row.
        row: usize,
        /// Its column.
        col: usize,
    },

    /// The pieces of a global sparsity budget do not agree: states of different budgets or rounds
    /// merged, a tensor seen with another shape or config than in an earlier stage, mixed norms.
    #[error("global budget mismatch for {what}: expected {expected}, got {actual}: {fix}")]
    BudgetMismatch {
        /// What is being checked (a tensor, a merged state).
        what: String,
        /// What the budget holds.
        expected: String,
        /// What was given.
        actual: String,
        /// How to fix it.
        fix: &'static str,
    },

    /// An index into an embedding table is out of range.
    #[error("{module}: index {index} at position {position} is out of range for a table of {num_embeddings} rows")]
    IndexOutOfRange {
        /// "Embedding" or "EmbeddingBag".
        module: &'static str,
        /// The offending index.
        index: i64,
        /// Where it was in the input.
        position: usize,
        /// The table's row count.
        num_embeddings: usize,
    },

    /// The arguments of an embedding lookup are inconsistent (offsets, weights, modes).
    #[error("{module}: {message}")]
    InvalidLookup {
        /// "Embedding" or "EmbeddingBag".
        module: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// A saved state cannot be read or written: truncated, tampered, of another format, or not
    /// representable as JSON.
    #[error("invalid saved state{}: {message}{}", source_name.as_ref().map(|s| format!(" in {s}")).unwrap_or_default(), source.as_ref().map(|s| format!(": {s}")).unwrap_or_default())]
    InvalidState {
        /// The file, if one is involved.
        source_name: Option<String>,
        /// What is wrong.
        message: String,
        /// The underlying error (a JSON encoder's or decoder's), if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// A safetensors file could not be parsed.
    #[error("cannot read safetensors data{}: {source}", source_name.as_ref().map(|s| format!(" from {s}")).unwrap_or_default())]
    Safetensors {
        /// The file, if one is involved.
        source_name: Option<String>,
        /// What is wrong with it.
        #[source]
        source: crate::format::safetensors::FormatError,
    },

    /// A compact table (see [`compact`](crate::compact)) is inconsistent: truncated, tampered, or
    /// written by a newer version.
    #[error("invalid compact table {table:?}{}: {message}", source_name.as_ref().map(|s| format!(" in {s}")).unwrap_or_default())]
    InvalidCompact {
        /// The file, if one is involved.
        source_name: Option<String>,
        /// The table's name.
        table: String,
        /// What is wrong, and the fix.
        message: String,
    },

    /// A sharded checkpoint's index (`model.safetensors.index.json`) is malformed or does not
    /// match its shards: a tensor named twice, a shard that is missing, a tensor the index puts
    /// in a shard that does not hold it.
    #[error("sharded checkpoint {index}: {message}")]
    InvalidIndex {
        /// The index file.
        index: String,
        /// What is wrong, and the fix.
        message: String,
        /// The underlying error (the JSON parser's), if any.
        #[source]
        source: Option<serde_json::Error>,
    },

    /// A file that should hold compact tables does not (no compact metadata key).
    #[error("{source_name} is not a compact file (no {key:?} entry in its __metadata__): {fix}")]
    NotCompact {
        /// The file.
        source_name: String,
        /// The metadata key looked for.
        key: &'static str,
        /// What to do instead.
        fix: &'static str,
    },

    /// An I/O error, with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// An error from another framework holding the data (e.g. candle), or a use of it this crate
    /// cannot serve (a tensor on a GPU, a non-float dtype).
    #[error("{framework}: {message}")]
    External {
        /// The framework ("candle").
        framework: &'static str,
        /// What went wrong and what to do about it.
        message: String,
    },

    /// An error of another framework or language holding the data (candle, Python), kept as the
    /// source.
    #[error("{framework}: {source}")]
    Foreign {
        /// The framework ("candle", "python").
        framework: &'static str,
        /// Its error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// Another error, about the data of this name: context added by wrapping (see
    /// [`Error::with_data`]). [`Error::root`] reaches the error inside.
    #[error("data {name:?}: {source}")]
    WithData {
        /// The data name.
        name: String,
        /// The error.
        #[source]
        source: Box<Error>,
    },

    /// An error raised by a user's [`UpdateMask`](crate::UpdateMask) implementation.
    #[error("update_mask failed for {name:?}: {message}")]
    UpdateFailed {
        /// The data name.
        name: String,
        /// The implementer's message.
        message: String,
    },

    /// Quantizing a table failed (a non-finite value, a value beyond the codec's range, a buffer
    /// of the wrong size, a module that is not an embedding): see [`crate::quant::QuantError`].
    #[error(transparent)]
    Quant(#[from] crate::quant::QuantError),
}

impl Error {
    /// Shorthand for an [`Error::InvalidConfig`].
    ///
    /// ```
    /// use data_sparsifier::Error;
    /// let err = Error::invalid_config("emb", "threshold", -1.0, "a value >= 0");
    /// assert!(matches!(err, Error::InvalidConfig { key: "threshold", .. }));
    /// assert_eq!(err.to_string(), "invalid config for \"emb\": threshold = -1: a value >= 0");
    /// ```
    pub fn invalid_config(
        name: impl Into<String>,
        key: &'static str,
        value: impl ToString,
        expected: impl Into<String>,
    ) -> Self {
        Error::InvalidConfig {
            name: name.into(),
            key,
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// Shorthand for an [`Error::InvalidState`] without a file name.
    ///
    /// ```
    /// use data_sparsifier::Error;
    /// let err = Error::invalid_state("entry \"x\" is missing");
    /// assert!(matches!(err, Error::InvalidState { source_name: None, .. }));
    /// assert!(err.to_string().starts_with("invalid saved state: "));
    /// ```
    pub fn invalid_state(message: impl Into<String>) -> Self {
        Error::InvalidState {
            source_name: None,
            message: message.into(),
            source: None,
        }
    }

    /// An [`Error::InvalidState`] that keeps the error behind it as its source.
    ///
    /// ```
    /// use data_sparsifier::Error;
    /// let json = serde_json::from_str::<u32>("x").unwrap_err();
    /// let err = Error::invalid_state_from("the \"state\" metadata is not valid", json);
    /// assert!(err.to_string().starts_with("invalid saved state: the \"state\" metadata is not valid: "));
    /// assert!(std::error::Error::source(&err).is_some());
    /// ```
    pub fn invalid_state_from(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::InvalidState {
            source_name: None,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    /// Adds the name of the data an error is about, by wrapping it in [`Error::WithData`],
    /// unless the error already names that data (most variants carry the name themselves).
    ///
    /// ```
    /// use data_sparsifier::{Error, Mask};
    /// let err = Mask::ones([2]).and(&Mask::ones([3])).unwrap_err().with_data("emb");
    /// assert!(matches!(err, Error::WithData { ref name, .. } if name == "emb"));
    /// assert!(err.to_string().starts_with("data \"emb\": shape mismatch"), "{err}");
    /// assert!(matches!(err.root(), Error::ShapeMismatch { .. }));
    /// // Already named: returned as it is.
    /// let named = Error::Squashed { name: "emb".into() }.with_data("emb");
    /// assert!(matches!(named, Error::Squashed { .. }));
    /// ```
    pub fn with_data(self, name: &str) -> Self {
        if self.names_data(name) {
            self
        } else {
            Error::WithData {
                name: name.to_string(),
                source: Box::new(self),
            }
        }
    }

    /// Whether this error's own fields already name the data `name`.
    fn names_data(&self, name: &str) -> bool {
        let quoted = format!("{name:?}");
        match self {
            Error::InvalidName { name: n, .. }
            | Error::UnknownName { name: n, .. }
            | Error::KindChange { name: n, .. }
            | Error::Squashed { name: n }
            | Error::DuplicateName { name: n, .. }
            | Error::UnsupportedShape { name: n, .. }
            | Error::InvalidConfig { name: n, .. }
            | Error::UnknownConfigKey { name: n, .. }
            | Error::ConfigValue { name: n, .. }
            | Error::NanInData { name: n, .. }
            | Error::WithData { name: n, .. }
            | Error::UpdateFailed { name: n, .. } => n == name,
            Error::ShapeMismatch { what, .. }
            | Error::DTypeMismatch { what, .. }
            | Error::UnsupportedDType { what, .. }
            | Error::BudgetMismatch { what, .. } => what.contains(&quoted),
            Error::External { message, .. } => message.contains(&quoted),
            _ => false,
        }
    }

    /// The error inside any [`Error::WithData`] wrappers: what went wrong, without the context.
    ///
    /// ```
    /// use data_sparsifier::Error;
    /// let err = Error::invalid_state("truncated").with_data("w");
    /// assert!(matches!(err.root(), Error::InvalidState { .. }));
    /// ```
    pub fn root(&self) -> &Error {
        match self {
            Error::WithData { source, .. } => source.root(),
            other => other,
        }
    }

    /// Shorthand for an [`Error::Io`].
    ///
    /// ```
    /// use data_sparsifier::Error;
    /// let source = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
    /// let err = Error::io("/tmp/state.safetensors", source);
    /// assert_eq!(err.to_string(), "/tmp/state.safetensors: no such file");
    /// assert!(std::error::Error::source(&err).is_some());
    /// ```
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

/// The crate's result type.
///
/// ```
/// use data_sparsifier::{Result, Tensor};
/// fn two_by_two(v: Vec<f32>) -> Result<Tensor> {
///     Tensor::from_vec(v, [2, 2])
/// }
/// assert!(two_by_two(vec![0.0; 4]).is_ok());
/// assert!(two_by_two(vec![0.0; 3]).is_err());
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;
