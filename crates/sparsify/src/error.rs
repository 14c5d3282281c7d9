//! The CLI's error type. Every error renders as ONE line naming the problem and the fix; the binary
//! prints it as `error: ...` on stderr and exits with status 2.

use std::path::Path;

/// Everything that can go wrong in a `sparsify` command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A command-line flag or argument is wrong.
    #[error("{0}")]
    Usage(String),

    /// The input file does not exist.
    #[error("input file {path} does not exist: check the path")]
    MissingInput {
        /// The path given.
        path: String,
    },

    /// The input is not a readable safetensors file.
    #[error("{path} is not a valid safetensors file: {source}")]
    BadInput {
        /// The file.
        path: String,
        /// What is wrong with it.
        #[source]
        source: data_sparsifier::format::safetensors::FormatError,
    },

    /// An output file exists and `--force` was not given.
    #[error("{path} already exists: pass --force to overwrite it, or choose another path")]
    OutputExists {
        /// The existing file.
        path: String,
    },

    /// Two paths that must differ name the same file.
    #[error(
        "{what_a} and {what_b} are the same file ({path}): choose a different path for {what_b}"
    )]
    SamePath {
        /// The first role (e.g. "the input").
        what_a: String,
        /// The second role (e.g. "--output").
        what_b: String,
        /// The path.
        path: String,
    },

    /// An error in the config file, located by line.
    #[error("{file}:{line}: {message}")]
    ConfigFile {
        /// The config file.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong and how to fix it.
        message: String,
    },

    /// The tensor selection is wrong (a glob that selects nothing, non-float data, ...).
    #[error("{0}")]
    Selection(String),

    /// The input's data cannot be sparsified as asked (e.g. NaN with the default NaN policy).
    #[error("{0}")]
    Data(String),

    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },

    /// A sharded checkpoint's index is malformed or does not match its shards (the library's
    /// [`InvalidIndex`](data_sparsifier::Error::InvalidIndex), which names the index).
    #[error("{source}")]
    Sharded {
        /// The library's error.
        #[source]
        source: data_sparsifier::Error,
    },

    /// An error from the library, with what the CLI was doing.
    #[error("{context}: {source}")]
    Library {
        /// What was being done (e.g. "sparsifying tensor \"emb\"").
        context: String,
        /// The library's error.
        #[source]
        source: data_sparsifier::Error,
    },
}

impl CliError {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        CliError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
    /// A library error with context.
    pub fn lib(context: impl Into<String>, source: data_sparsifier::Error) -> Self {
        CliError::Library {
            context: context.into(),
            source,
        }
    }
    /// The message as a single line (any newline in a nested message is folded into a space).
    pub fn one_line(&self) -> String {
        let s = self.to_string();
        s.split(['\n', '\r'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
    /// The process exit status for this error (always 2: the command did not do its job).
    pub fn exit_code(&self) -> u8 {
        2
    }
}

/// The CLI's result type.
pub type Result<T, E = CliError> = std::result::Result<T, E>;
