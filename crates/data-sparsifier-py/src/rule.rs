//! [`PyRule`]: the library's [`UpdateMask`] rule for a sparsifier whose `update_mask` is written
//! in Python (a subclass of `BaseDataSparsifier`), and [`PyConfig`], its config of Python values.
//!
//! The container (adding, replacing, stepping, squashing, state) stays the library's
//! [`DataSparsifier`](data_sparsifier::DataSparsifier); only the mask rule calls back into Python.
//! On each step the rule hands the Python layer the entry's mask as a dense `uint8` array, the
//! Python `update_mask(name, data, **config)` edits the mask tensor in place, and the result is
//! packed back into the bit-packed mask.

use std::collections::HashMap;
use std::sync::Mutex;

use data_sparsifier::{Config, Error, Mask, Result, TensorView, UpdateMask};
use numpy::{IntoPyArray, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A config of Python values, in insertion order: PyTorch's per-data `**config` dict.
#[derive(Debug, Default)]
pub(crate) struct PyConfig(pub(crate) Vec<(String, Py<PyAny>)>);

impl PyConfig {
    /// The config from a Python dict.
    pub(crate) fn from_dict(dict: &Bound<'_, PyDict>) -> PyResult<Self> {
        dict.iter()
            .map(|(k, v)| Ok((k.extract::<String>()?, v.unbind())))
            .collect::<PyResult<_>>()
            .map(PyConfig)
    }
    /// The config as a new Python dict.
    pub(crate) fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in &self.0 {
            d.set_item(k, v.bind(py))?;
        }
        Ok(d)
    }
    /// Sets (or adds) one key.
    pub(crate) fn set(&mut self, key: String, value: Py<PyAny>) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.0.push((key, value)),
        }
    }
    /// Removes one key; whether it was there.
    pub(crate) fn remove(&mut self, key: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|(k, _)| k != key);
        self.0.len() != before
    }
}

impl Clone for PyConfig {
    fn clone(&self) -> Self {
        Python::with_gil(|py| {
            PyConfig(
                self.0
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone_ref(py)))
                    .collect(),
            )
        })
    }
}

impl PartialEq for PyConfig {
    /// Python `==` of the two dicts (a comparison that raises counts as unequal).
    fn eq(&self, other: &Self) -> bool {
        Python::with_gil(|py| match (self.to_dict(py), other.to_dict(py)) {
            (Ok(a), Ok(b)) => a.eq(b).unwrap_or(false),
            _ => false,
        })
    }
}

impl Serialize for PyConfig {
    /// Through Python's `json` module: a config of JSON values saves; anything else is an error.
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let text = Python::with_gil(|py| -> PyResult<String> {
            let json = py.import("json")?;
            json.call_method1("dumps", (self.to_dict(py)?,))?.extract()
        })
        .map_err(|e| S::Error::custom(format!("config is not JSON-serializable: {e}")))?;
        let value: serde_json::Value = serde_json::from_str(&text).map_err(S::Error::custom)?;
        value.serialize(s)
    }
}

impl<'de> Deserialize<'de> for PyConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let text = value.to_string();
        Python::with_gil(|py| -> PyResult<PyConfig> {
            let obj = py.import("json")?.call_method1("loads", (text,))?;
            PyConfig::from_dict(obj.downcast::<PyDict>()?)
        })
        .map_err(|e| D::Error::custom(format!("config is not a JSON object: {e}")))
    }
}

impl Config for PyConfig {
    type Patch = PyConfig;
    /// PyTorch's `dict.update`: the patch's keys override, new keys are added.
    fn apply(&mut self, patch: &PyConfig) {
        let patch = patch.clone();
        for (k, v) in patch.0 {
            self.set(k, v);
        }
    }
}

/// The mask rule of a Python subclass: calls `owner._native_update_mask(name, data, config,
/// dense_mask)` and packs the mask it returns.
pub(crate) struct PyRule {
    /// A weak reference to the Python sparsifier (the Python object owns this rule; a strong
    /// reference would be a cycle the garbage collector cannot see).
    owner: Py<PyAny>,
    /// The Python object held under each name (passed to `update_mask` as `data`).
    pub(crate) objects: HashMap<String, Py<PyAny>>,
    /// The Python exception raised by the last failed `update_mask`, re-raised as it is.
    pub(crate) failure: Mutex<Option<PyErr>>,
}

impl PyRule {
    pub(crate) fn new(owner: Py<PyAny>) -> Self {
        PyRule {
            owner,
            objects: HashMap::new(),
            failure: Mutex::new(None),
        }
    }

    fn call(&self, py: Python<'_>, name: &str, config: &PyConfig, mask: &mut Mask) -> PyResult<()> {
        let owner = self.owner.bind(py).call0()?;
        if owner.is_none() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "the Python sparsifier that owns this rule no longer exists",
            ));
        }
        let data = match self.objects.get(name) {
            Some(o) => o.bind(py).clone(),
            None => py.None().into_bound(py),
        };
        let dense = mask
            .to_dense_u8()
            .into_pyarray(py)
            .reshape(mask.shape().to_vec())?;
        let out = owner.call_method1(
            "_native_update_mask",
            (name, data, config.to_dict(py)?, dense),
        )?;
        let arr = out.extract::<PyReadonlyArrayDyn<'_, u8>>()?;
        let shape: Vec<usize> = arr.shape().to_vec();
        let packed = Mask::from_dense_u8(shape, arr.as_slice()?).map_err(crate::errors::to_py)?;
        *mask = packed;
        Ok(())
    }
}

impl UpdateMask for PyRule {
    type Config = PyConfig;
    type State = ();

    fn name(&self) -> &'static str {
        "BaseDataSparsifier"
    }
    fn update_mask(
        &self,
        name: &str,
        _data: TensorView<'_>,
        config: &PyConfig,
        _state: &mut (),
        mask: &mut Mask,
    ) -> Result<()> {
        Python::with_gil(|py| self.call(py, name, config, mask)).map_err(|e| {
            let message = e.to_string();
            if let Ok(mut slot) = self.failure.lock() {
                *slot = Some(e);
            }
            Error::UpdateFailed {
                name: name.to_string(),
                message,
            }
        })
    }
}
