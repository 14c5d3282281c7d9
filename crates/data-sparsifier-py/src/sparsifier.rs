//! The `_native.Sparsifier` class: the library's [`DataSparsifier`] holding Python arrays, with
//! either the DataNorm kernel or a Python `update_mask` as its rule. The Python layer
//! (`data_sparsifier/base_data_sparsifier.py`) gives it PyTorch's API.

use std::collections::HashMap;
use std::sync::Arc;

use data_sparsifier::{
    norm::NanPolicy, norm::Norm, AddOptions, Config, Data, DataKind, DataNorm, DataNormConfig,
    DataNormPatch, DataSparsifier, EntryState, LoadOptions, Mask, SquashOptions, StateDict,
    UpdateMask, Version,
};
use numpy::{IntoPyArray, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use crate::errors::{to_py, IntoPyResult};
use crate::rule::{PyConfig, PyRule};
use crate::store::{tensor_from_py, tensor_to_numpy, ArrayStore};

/// The two rules a Python sparsifier can have.
enum Inner {
    Norm(DataSparsifier<DataNorm>),
    Py(DataSparsifier<PyRule>),
}

/// Runs `$body` with `$sp` bound to the inner sparsifier, whichever rule it has.
macro_rules! with_sp {
    ($inner:expr, $sp:ident => $body:expr) => {
        match $inner {
            Inner::Norm($sp) => $body,
            Inner::Py($sp) => $body,
        }
    };
}

/// The keys of a DataNorm config as PyTorch spells them.
const NORM_KEYS: &str = "sparsity_level, sparse_block_shape, zeros_per_block";

fn non_negative(key: &str, v: i64) -> PyResult<usize> {
    usize::try_from(v).map_err(|_| {
        crate::errors::to_py(data_sparsifier::Error::invalid_config(
            "<config>",
            match key {
                "zeros_per_block" => "zeros_per_block",
                _ => "sparse_block_shape",
            },
            v,
            "expected a non-negative integer",
        ))
    })
}

fn unknown_key(key: &str) -> PyErr {
    PyTypeError::new_err(format!(
        "DataNormSparsifier got an unknown config key {key:?}; its keys are {NORM_KEYS} (the \
         norm is a constructor argument)"
    ))
}

/// A DataNorm patch from PyTorch-style keyword arguments.
fn norm_patch(config: &Bound<'_, PyDict>) -> PyResult<DataNormPatch> {
    let mut p = DataNormPatch::default();
    for (k, v) in config.iter() {
        let key: String = k.extract()?;
        match key.as_str() {
            "sparsity_level" => p.sparsity_level = Some(v.extract::<f64>()?),
            "sparse_block_shape" => {
                let (h, w): (i64, i64) = v.extract()?;
                p.sparse_block_shape = Some((
                    non_negative("sparse_block_shape", h)?,
                    non_negative("sparse_block_shape", w)?,
                ));
            }
            "zeros_per_block" => {
                p.zeros_per_block = Some(non_negative("zeros_per_block", v.extract::<i64>()?)?)
            }
            _ => return Err(unknown_key(&key)),
        }
    }
    Ok(p)
}

fn norm_dict<'py>(py: Python<'py>, c: &DataNormConfig) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("sparsity_level", c.sparsity_level)?;
    let (h, w) = c.sparse_block_shape;
    d.set_item("sparse_block_shape", PyTuple::new(py, [h, w])?)?;
    d.set_item("zeros_per_block", c.zeros_per_block_effective())?;
    Ok(d)
}

/// The library's `load_state_dict` on `entries`, keeping the sparsifier's kind and flags.
fn load_entries<U: UpdateMask<State = ()>>(
    sp: &mut DataSparsifier<U>,
    entries: Vec<EntryState<U::Config, ()>>,
    strict: bool,
) -> PyResult<()> {
    let state = StateDict {
        sparsifier: sp.updater().name().to_string(),
        mask_update_enabled: sp.mask_update_enabled(),
        entries,
        extra: Default::default(),
    };
    sp.load_state_dict(state, LoadOptions { strict }).py()
}

/// One entry of a state dict being loaded: `(name, data, dense mask, config, parametrized)`.
type LoadEntry<'py> = (
    String,
    Bound<'py, PyAny>,
    PyReadonlyArrayDyn<'py, u8>,
    Bound<'py, PyDict>,
    bool,
);

/// A library sparsifier over Python arrays.
#[pyclass(module = "data_sparsifier._native", name = "Sparsifier", unsendable)]
pub(crate) struct PySparsifier {
    inner: Inner,
    /// The Python object held under each name: what `get_data(name)` returns.
    objects: HashMap<String, Py<PyAny>>,
}

impl PySparsifier {
    fn object(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        // The library's error for an unknown name.
        with_sp!(&self.inner, sp => sp.kind(name).py())?;
        self.objects
            .get(name)
            .map(|o| o.clone_ref(py))
            .ok_or_else(|| PyKeyError::new_err(format!("no Python object held for {name:?}")))
    }
    fn remember(&mut self, py: Python<'_>, name: &str, obj: Py<PyAny>) {
        if let Inner::Py(sp) = &mut self.inner {
            sp.updater_mut()
                .objects
                .insert(name.to_string(), obj.clone_ref(py));
        }
        self.objects.insert(name.to_string(), obj);
    }
    /// Holds `obj` under `name` through the ExternalTensor seam.
    fn add(
        &mut self,
        py: Python<'_>,
        name: &str,
        obj: &Bound<'_, PyAny>,
        config: &Bound<'_, PyDict>,
        reuse_mask: bool,
    ) -> PyResult<()> {
        // The library checks the name first; do the same before looking at the data.
        data_sparsifier::validate_name(name).py()?;
        let store = ArrayStore::new(py, obj, name)?;
        // Every Python array enters as one kind: PyTorch lets a name change type on replace
        // (an embedding's weight replaced by a plain tensor), which the library refuses between
        // kinds. The Python type is the object's own.
        let data = Data::External(DataKind::Tensor, Arc::new(store));
        match &mut self.inner {
            Inner::Norm(sp) => {
                let patch = norm_patch(config)?;
                sp.add_data_with(name, data, AddOptions { patch, reuse_mask })
                    .py()?;
            }
            Inner::Py(sp) => {
                let patch = PyConfig::from_dict(config)?;
                sp.add_data_with(name, data, AddOptions { patch, reuse_mask })
                    .py()?;
            }
        }
        self.remember(py, name, obj.clone().unbind());
        Ok(())
    }
}

#[pymethods]
impl PySparsifier {
    /// A DataNorm sparsifier (PyTorch's `DataNormSparsifier`).
    #[staticmethod]
    #[pyo3(signature = (sparsity_level, sparse_block_shape, zeros_per_block, norm, nan_policy))]
    fn data_norm(
        sparsity_level: f64,
        sparse_block_shape: (i64, i64),
        zeros_per_block: i64,
        norm: &str,
        nan_policy: &str,
    ) -> PyResult<Self> {
        let norm: Norm = norm.parse().py()?;
        let nan_policy: NanPolicy = nan_policy.parse().py()?;
        let (h, w) = sparse_block_shape;
        let config = DataNormConfig {
            sparsity_level,
            sparse_block_shape: (
                non_negative("sparse_block_shape", h)?,
                non_negative("sparse_block_shape", w)?,
            ),
            zeros_per_block: Some(non_negative("zeros_per_block", zeros_per_block)?),
            norm,
            nan_policy,
        };
        Ok(PySparsifier {
            inner: Inner::Norm(DataSparsifier::new(DataNorm::new(), config).py()?),
            objects: HashMap::new(),
        })
    }

    /// A sparsifier whose rule is `owner().update_mask` (owner: a weak reference).
    #[staticmethod]
    fn python(owner: Py<PyAny>, defaults: &Bound<'_, PyDict>) -> PyResult<Self> {
        let defaults = PyConfig::from_dict(defaults)?;
        Ok(PySparsifier {
            inner: Inner::Py(DataSparsifier::new(PyRule::new(owner), defaults).py()?),
            objects: HashMap::new(),
        })
    }

    /// Adds or replaces `name` (PyTorch's `add_data` semantics, from the library).
    #[pyo3(signature = (name, data, config, reuse_mask=true))]
    fn add_data(
        &mut self,
        py: Python<'_>,
        name: &str,
        data: &Bound<'_, PyAny>,
        config: &Bound<'_, PyDict>,
        reuse_mask: bool,
    ) -> PyResult<()> {
        self.add(py, name, data, config, reuse_mask)
    }

    /// Recomputes every mask. The GIL is released while the kernel reads each entry.
    fn step(&mut self) -> PyResult<()> {
        match &mut self.inner {
            Inner::Norm(sp) => sp.step().py(),
            Inner::Py(sp) => {
                let r = sp.step();
                let failure = sp.updater().failure.lock().ok().and_then(|mut f| f.take());
                match (r, failure) {
                    (Ok(()), _) => Ok(()),
                    (Err(_), Some(py_err)) => Err(py_err),
                    (Err(e), None) => Err(to_py(e)),
                }
            }
        }
    }

    fn names(&self) -> Vec<String> {
        with_sp!(&self.inner, sp => sp.names().map(String::from).collect())
    }
    fn __len__(&self) -> usize {
        with_sp!(&self.inner, sp => sp.len())
    }
    fn __contains__(&self, name: &str) -> bool {
        with_sp!(&self.inner, sp => sp.contains(name))
    }

    /// The config of `name` as a new dict.
    fn config<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyDict>> {
        match &self.inner {
            Inner::Norm(sp) => norm_dict(py, sp.config(name).py()?),
            Inner::Py(sp) => sp.config(name).py()?.to_dict(py),
        }
    }
    /// The default config as a new dict.
    fn defaults<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        match &self.inner {
            Inner::Norm(sp) => norm_dict(py, sp.defaults()),
            Inner::Py(sp) => sp.defaults().to_dict(py),
        }
    }
    /// Sets one config key of `name` (what a data scheduler writes). DataNorm values are checked
    /// at the next step, as the library does.
    fn set_config(&mut self, name: &str, key: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        match &mut self.inner {
            Inner::Norm(sp) => {
                let d = PyDict::new(value.py());
                d.set_item(key, value)?;
                let patch = norm_patch(&d)?;
                sp.config_mut(name).py()?.apply(&patch);
            }
            Inner::Py(sp) => sp
                .config_mut(name)
                .py()?
                .set(key.to_string(), value.clone().unbind()),
        }
        Ok(())
    }
    /// Removes one config key of `name` (Python rules only; DataNorm keys cannot be removed).
    fn del_config(&mut self, name: &str, key: &str) -> PyResult<()> {
        match &mut self.inner {
            Inner::Norm(_) => Err(PyTypeError::new_err(format!(
                "DataNormSparsifier config keys cannot be deleted ({NORM_KEYS} are all required)"
            ))),
            Inner::Py(sp) => {
                if sp.config_mut(name).py()?.remove(key) {
                    Ok(())
                } else {
                    Err(PyKeyError::new_err(key.to_string()))
                }
            }
        }
    }

    fn is_parametrized(&self, name: &str) -> PyResult<bool> {
        with_sp!(&self.inner, sp => sp.is_parametrized(name).py())
    }

    /// The original data: the caller's own object. Errors once squashed.
    fn original(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        with_sp!(&self.inner, sp => sp.with_original(name, |_| Ok(())).py())?;
        self.object(py, name)
    }

    /// The masked data: `(new numpy array, dtype name)` while parametrized, `(the held object,
    /// None)` once squashed (it then holds the masked values, or the untouched ones after a squash
    /// without `leave_parametrized`).
    fn masked(&self, py: Python<'_>, name: &str) -> PyResult<(Py<PyAny>, Option<&'static str>)> {
        if !self.is_parametrized(name)? {
            if let Some(o) = self.objects.get(name) {
                return Ok((o.clone_ref(py), None));
            }
        }
        let t = with_sp!(&self.inner, sp => sp.get_data(name, Version::Masked).py())?;
        let (arr, dtype) = tensor_to_numpy(py, t)?;
        Ok((arr, Some(dtype)))
    }

    /// The mask of `name` as a new dense `uint8` array of the data's shape.
    fn mask_u8<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let mask = with_sp!(&self.inner, sp => sp.get_mask(name).py())?;
        let shape = mask.shape().to_vec();
        Ok(mask
            .to_dense_u8()
            .into_pyarray(py)
            .reshape(shape)?
            .into_any())
    }

    /// Packs a dense mask (nonzero = keep) into the mask of `name`. It must have the data's shape.
    fn set_mask_u8(&mut self, name: &str, dense: PyReadonlyArrayDyn<'_, u8>) -> PyResult<()> {
        let shape = dense.shape().to_vec();
        let packed = Mask::from_dense_u8(shape, dense.as_slice()?).py()?;
        with_sp!(&mut self.inner, sp => {
            let want = sp.data_handle(name).py()?.shape();
            packed.check_shape(name, &want).py()?;
            *sp.get_mask_mut(name).py()? = packed;
        });
        Ok(())
    }

    /// `(kept, total, bytes)` of the mask of `name`: its density and its packed size.
    fn mask_stats(&self, name: &str) -> PyResult<(usize, usize, usize)> {
        let m = with_sp!(&self.inner, sp => sp.get_mask(name).py())?;
        Ok((m.count_kept(), m.len(), m.size_in_bytes()))
    }

    #[pyo3(signature = (names=None, leave_parametrized=true))]
    fn squash_mask(
        &mut self,
        names: Option<Vec<String>>,
        leave_parametrized: bool,
    ) -> PyResult<()> {
        let names: Option<Vec<&str>> = names
            .as_ref()
            .map(|v| v.iter().map(String::as_str).collect());
        with_sp!(&mut self.inner, sp => sp.squash_mask(names.as_deref(), SquashOptions { leave_parametrized }).py())
    }

    #[getter]
    fn get_enable_mask_update(&self) -> bool {
        with_sp!(&self.inner, sp => sp.mask_update_enabled())
    }
    #[setter]
    fn set_enable_mask_update(&mut self, enabled: bool) {
        with_sp!(&mut self.inner, sp => sp.set_mask_update_enabled(enabled))
    }
    #[getter]
    fn step_count(&self) -> u64 {
        with_sp!(&self.inner, sp => sp.step_count())
    }

    /// Loads entries `(name, data, dense_mask_u8, config, parametrized)` with the library's
    /// `load_state_dict`. Data is copied in; loaded names not already held with the same shape and
    /// dtype are then held as new torch tensors made by the Python layer (`fresh(name, numpy_array,
    /// dtype)` returns one).
    fn load(
        &mut self,
        py: Python<'_>,
        entries: Vec<LoadEntry<'_>>,
        strict: bool,
        fresh: Bound<'_, PyAny>,
    ) -> PyResult<()> {
        fn entry<C>(
            py: Python<'_>,
            name: &str,
            data: &Bound<'_, PyAny>,
            mask: &PyReadonlyArrayDyn<'_, u8>,
            config: C,
            parametrized: bool,
        ) -> PyResult<EntryState<C, ()>> {
            let data = tensor_from_py(py, data, name)?;
            let mask = Mask::from_dense_u8(mask.shape().to_vec(), mask.as_slice()?).py()?;
            Ok(EntryState {
                name: name.to_string(),
                kind: DataKind::Tensor,
                data,
                mask,
                config,
                state: (),
                parametrized,
            })
        }
        let names: Vec<String> = entries.iter().map(|e| e.0.clone()).collect();
        match &mut self.inner {
            Inner::Norm(sp) => {
                let mut out = Vec::new();
                for (name, data, mask, config, parametrized) in &entries {
                    let mut c = sp.defaults().clone();
                    c.apply(&norm_patch(config)?);
                    out.push(entry(py, name, data, mask, c, *parametrized)?);
                }
                load_entries(sp, out, strict)?;
            }
            Inner::Py(sp) => {
                let mut out = Vec::new();
                for (name, data, mask, config, parametrized) in &entries {
                    let c = PyConfig::from_dict(config)?;
                    out.push(entry(py, name, data, mask, c, *parametrized)?);
                }
                load_entries(sp, out, strict)?;
            }
        }
        // Names the library now holds in its own storage (not written into a held Python array)
        // become Python arrays again, so get_data returns a tensor the caller can use.
        let held: Vec<String> = self.names();
        self.objects.retain(|n, _| held.contains(n));
        if let Inner::Py(sp) = &mut self.inner {
            sp.updater_mut().objects.retain(|n, _| held.contains(n));
        }
        for name in names {
            let native =
                with_sp!(&self.inner, sp => sp.data_handle(&name).py()?.as_parameter().is_some());
            if !native {
                continue;
            }
            let t = with_sp!(&self.inner, sp => sp.data_handle(&name).py()?.snapshot().py())?;
            let (arr, dtype) = tensor_to_numpy(py, t)?;
            let obj = fresh.call1((name.as_str(), arr, dtype))?;
            if self.is_parametrized(&name)? {
                // A replace that keeps the loaded mask and config: only the storage changes.
                self.add(py, &name, &obj, &PyDict::new(py), true)?;
            } else {
                // A squashed entry cannot be replaced; it stays in the library's storage and is
                // read back as a copy.
                self.objects.remove(&name);
            }
        }
        Ok(())
    }
}
