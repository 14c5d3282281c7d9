//! The study's errors.

/// Why the study stopped.
#[derive(Debug, thiserror::Error)]
pub enum StudyError {
    /// The library failed (sparsify, compact, lookups).
    #[error(transparent)]
    Sparsifier(#[from] data_sparsifier::Error),
    /// candle failed (training, forward).
    #[error("candle: {0}")]
    Candle(#[from] candle_core::Error),
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The MovieLens download was not available.
    #[error("MovieLens-100k is unavailable: {0}")]
    Download(String),
    /// A dataset file is malformed.
    #[error("{0}")]
    Data(String),
    /// A plot could not be drawn.
    #[error("plotting {0}")]
    Plot(String),
}

impl StudyError {
    /// An I/O error with what was being done.
    pub fn io(what: String, source: std::io::Error) -> Self {
        StudyError::Io { what, source }
    }
}

/// The study's result type.
pub type Result<T, E = StudyError> = std::result::Result<T, E>;
