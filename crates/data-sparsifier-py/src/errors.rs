//! Our [`Error`]s as Python exceptions of the types PyTorch raises for the same mistake.
//!
//! Where PyTorch raises an `AssertionError` (a shape mismatch, an unsupported data type) the
//! exception class derives from both the natural type and `AssertionError`, so code written
//! against either keeps working. The classes live in `data_sparsifier/_errors.py`.

use data_sparsifier::Error;
use pyo3::exceptions::{PyKeyError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

/// Converts a library error into the Python exception a PyTorch user expects, keeping our message.
pub(crate) fn to_py(err: Error) -> PyErr {
    let msg = err.to_string();
    // The exception type is the inner error's (a `WithData` wrapper only adds the name).
    match err.root() {
        // PyTorch: nn.Module.register_buffer raises KeyError for "" and names with '.'.
        Error::InvalidName { name, .. } if name.is_empty() || name.contains('.') => {
            PyKeyError::new_err(msg)
        }
        Error::ShapeMismatch { .. } => custom("ShapeError", msg),
        Error::UnsupportedDType { .. } | Error::DTypeMismatch { .. } => {
            custom("DataTypeError", msg)
        }
        Error::InvalidConfig { .. } => custom("ConfigError", msg),
        Error::InvalidState { .. } | Error::Safetensors { .. } => PyRuntimeError::new_err(msg),
        Error::Io { .. } => PyOSError::new_err(msg),
        Error::External { .. } | Error::Foreign { .. } | Error::UpdateFailed { .. } => {
            PyRuntimeError::new_err(msg)
        }
        // Unknown or squashed names, duplicates, 3-D data, NaN, kind changes: PyTorch's
        // ValueError family.
        _ => PyValueError::new_err(msg),
    }
}

/// An instance of one of the exception classes of `data_sparsifier._errors`, falling back to
/// `ValueError` should that module be unimportable.
fn custom(class: &str, msg: String) -> PyErr {
    Python::with_gil(|py| {
        let made = py
            .import("data_sparsifier._errors")
            .and_then(|m| m.getattr(class))
            .and_then(|c| c.call1((msg.clone(),)));
        match made {
            Ok(exc) => PyErr::from_value(exc),
            Err(_) => PyValueError::new_err(msg),
        }
    })
}

/// Extension trait: `.py()?` on library results.
pub(crate) trait IntoPyResult<T> {
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, Error> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// A Python error met inside a library callback, as a library error naming the framework.
pub(crate) fn from_py(err: PyErr) -> Error {
    Error::Foreign {
        framework: "python",
        source: Box::new(err),
    }
}
