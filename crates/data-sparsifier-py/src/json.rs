//! Python values to and from the JSON configs of the library's rules ([`data_sparsifier::Rule`]).
//!
//! Python → JSON: `None`, `bool`, `int` (anything with `__index__`), `float` (anything with
//! `__float__`: numpy and torch scalars), `str`, tuples and lists, and dicts with string keys.
//! JSON → Python: arrays come back as tuples, as PyTorch spells shapes (`(1, 4)`).

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyList, PyString, PyTuple};
use serde_json::{Map, Number, Value};

/// A Python value as JSON; `what` names it in the error.
pub(crate) fn to_json(v: &Bound<'_, PyAny>, what: &str) -> PyResult<Value> {
    if v.is_none() {
        return Ok(Value::Null);
    }
    if v.is_instance_of::<PyBool>() {
        return Ok(Value::Bool(v.extract()?));
    }
    if v.is_instance_of::<PyString>() {
        return Ok(Value::String(v.extract()?));
    }
    if let Ok(d) = v.downcast::<PyDict>() {
        return dict_to_json(d, what);
    }
    if v.is_instance_of::<PyTuple>() || v.is_instance_of::<PyList>() {
        return v
            .try_iter()?
            .map(|x| to_json(&x?, what))
            .collect::<PyResult<Vec<_>>>()
            .map(Value::Array);
    }
    if let Ok(i) = v.extract::<i64>() {
        return Ok(Value::from(i));
    }
    if let Ok(x) = v.extract::<f64>() {
        return Number::from_f64(x)
            .map(Value::Number)
            .ok_or_else(|| PyTypeError::new_err(format!("{what}: {x} is not a finite number")));
    }
    Err(PyTypeError::new_err(format!(
        "{what}: a value of type {} cannot be a config value (use None, bool, int, float, str, \
         or a tuple/list/dict of these)",
        v.get_type().name()?
    )))
}

/// A dict with string keys as a JSON object.
pub(crate) fn dict_to_json(d: &Bound<'_, PyDict>, what: &str) -> PyResult<Value> {
    let mut m = Map::new();
    for (k, v) in d.iter() {
        let key: String = k.extract()?;
        let value = to_json(&v, &format!("{what} key {key:?}"))?;
        m.insert(key, value);
    }
    Ok(Value::Object(m))
}

/// A JSON value as a Python value (arrays as tuples).
pub(crate) fn to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => i.into_pyobject(py)?.into_any(),
            (None, Some(u)) => u.into_pyobject(py)?.into_any(),
            _ => n.as_f64().unwrap_or(f64::NAN).into_pyobject(py)?.into_any(),
        },
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(a) => {
            let items = a
                .iter()
                .map(|x| to_py(py, x))
                .collect::<PyResult<Vec<_>>>()?;
            PyTuple::new(py, items)?.into_any()
        }
        Value::Object(m) => {
            let d = PyDict::new(py);
            for (k, x) in m {
                d.set_item(k, to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}
