//! `data_sparsifier._native`: the Rust extension module behind the `data_sparsifier` Python
//! package. It only wires the library to Python: arrays in through the library's `ExternalTensor`
//! seam ([`store`]), a Python `update_mask` as a library rule ([`rule`]), the container itself
//! ([`sparsifier`]), the schedules ([`schedule`]) and the error mapping ([`errors`]). The
//! PyTorch-shaped API is the thin Python layer in `python/data_sparsifier/`.

mod errors;
mod json;
mod rule;
mod schedule;
mod sparsifier;
mod store;

use pyo3::prelude::*;

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<sparsifier::PySparsifier>()?;
    m.add_function(wrap_pyfunction!(schedule::schedule_value, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
