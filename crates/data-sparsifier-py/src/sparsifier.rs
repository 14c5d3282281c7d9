//! The `_native.Sparsifier` class: the library's [`DataSparsifier`] holding Python arrays, with
//! either a rule from the library's [`Registry`] (DataNorm is its `"datanorm"` entry; any rule
//! registered in Rust is reachable by its kind) or a Python `update_mask` as its rule. The Python
//! layer (`data_sparsifier/base_data_sparsifier.py`) gives it PyTorch's API.

use std::collections::HashMap;
use std::sync::Arc;

use data_sparsifier::rule::{merge, DynSparsifier};
use data_sparsifier::Rule;
use data_sparsifier::{
    AddOptions, Data, DataKind, DataSparsifier, EntryState, LoadOptions, Mask, Registry,
    SquashOptions, StateDict, UpdateMask, Version,
};
use numpy::{IntoPyArray, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::Value;

use crate::errors::{to_py, IntoPyResult};
use crate::json;
use crate::rule::{PyConfig, PyRule};
use crate::store::{tensor_from_py, tensor_to_numpy, ArrayStore};

/// The two kinds of rule a Python sparsifier can have.
enum Inner {
    /// A rule of the library's registry, with JSON configs.
    Rule(RuleSparsifier),
    /// A Python `update_mask`.
    Py(DataSparsifier<PyRule>),
}

/// A registry rule's sparsifier and how Python sees its configs.
struct RuleSparsifier {
    sp: DynSparsifier,
    /// Config keys the Python class takes as constructor arguments, not per-data config (DataNorm's
    /// `norm` and `nan_policy`): hidden from config dicts and refused as config keys.
    fixed: Vec<String>,
}

impl RuleSparsifier {
    fn rule(&self) -> &dyn Rule {
        &**self.sp.updater()
    }

    /// The config keys Python may set.
    fn keys(&self) -> Vec<&str> {
        self.rule()
            .schema()
            .keys()
            .filter(|k| !self.fixed.iter().any(|f| f == k))
            .collect()
    }

    /// A JSON patch from PyTorch-style keyword arguments; unknown keys are a `TypeError`, as a
    /// Python function's unknown keyword is.
    fn patch(&self, config: &Bound<'_, PyDict>) -> PyResult<Value> {
        let open = self.rule().schema().is_open();
        let keys = self.keys();
        for k in config.keys() {
            let key: String = k.extract()?;
            if !open && !keys.contains(&key.as_str()) {
                let fixed = if self.fixed.is_empty() {
                    String::new()
                } else {
                    format!(" ({} are constructor arguments)", self.fixed.join(", "))
                };
                return Err(PyTypeError::new_err(format!(
                    "{} got an unknown config key {key:?}; its keys are {}{fixed}",
                    self.rule().name(),
                    keys.join(", ")
                )));
            }
        }
        Ok(canonical_choices(
            self.rule(),
            json::dict_to_json(config, "config")?,
        ))
    }

    /// A config as a new dict: canonical where it is valid (numbers as the rule stores them), the
    /// constructor arguments left out.
    fn dict<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        config: &Value,
    ) -> PyResult<Bound<'py, PyDict>> {
        let config = self
            .rule()
            .canonical(name, config)
            .unwrap_or_else(|_| config.clone());
        let d = PyDict::new(py);
        if let Value::Object(m) = &config {
            // The schema's order first (PyTorch's key order for DataNorm), then any other keys.
            let keys = self.keys();
            let rest = m.keys().filter(|k| !keys.contains(&k.as_str()));
            for k in keys.iter().copied().chain(rest.map(String::as_str)) {
                if let (Some(v), false) = (m.get(k), self.fixed.iter().any(|f| f == k)) {
                    d.set_item(k, json::to_py(py, v)?)?;
                }
            }
        }
        Ok(d)
    }
}

/// `patch` with each value the schema can read in its canonical spelling (`"L1"` for `"l1"`,
/// `"rank_last"` for `"rank-last"`), as the CLI reads its flags; other values are left for the
/// rule's validation to report.
fn canonical_choices(rule: &dyn Rule, mut patch: Value) -> Value {
    if let Value::Object(m) = &mut patch {
        for (k, v) in m.iter_mut() {
            if let Some(Ok(c)) = rule.schema().field(k).map(|f| f.check_type(v)) {
                *v = c;
            }
        }
    }
    patch
}

/// Runs `$body` with `$sp` bound to the inner sparsifier, whichever rule it has.
macro_rules! with_sp {
    ($inner:expr, $sp:ident => $body:expr) => {
        match $inner {
            Inner::Rule(RuleSparsifier { sp: $sp, .. }) => $body,
            Inner::Py($sp) => $body,
        }
    };
}

/// The library's `load_state_dict` on `entries`, keeping the sparsifier's kind and flags.
fn load_entries<U: UpdateMask>(
    sp: &mut DataSparsifier<U>,
    entries: Vec<EntryState<U::Config, U::State>>,
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
    /// A sparsifier over the registry's rule `kind`, its defaults the rule's own overlaid with
    /// `defaults`; `fixed` keys are constructor arguments (see [`RuleSparsifier::fixed`]).
    fn build(kind: &str, defaults: &Bound<'_, PyDict>, fixed: Vec<String>) -> PyResult<Self> {
        let registry = Registry::builtin();
        let rule = registry.create(kind).py()?;
        let mut config = rule.defaults();
        let patch = json::dict_to_json(defaults, "defaults")?;
        merge(&mut config, &canonical_choices(&*rule, patch));
        let sp = DataSparsifier::new(rule, config).py()?;
        Ok(PySparsifier {
            inner: Inner::Rule(RuleSparsifier { sp, fixed }),
            objects: HashMap::new(),
        })
    }

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
}

#[pymethods]
impl PySparsifier {
    /// A DataNorm sparsifier (PyTorch's `DataNormSparsifier`): the registry's `"datanorm"` rule,
    /// with `norm` and `nan_policy` fixed for every data.
    #[staticmethod]
    #[pyo3(signature = (sparsity_level, sparse_block_shape, zeros_per_block, norm, nan_policy))]
    fn data_norm(
        py: Python<'_>,
        sparsity_level: &Bound<'_, PyAny>,
        sparse_block_shape: &Bound<'_, PyAny>,
        zeros_per_block: &Bound<'_, PyAny>,
        norm: &str,
        nan_policy: &str,
    ) -> PyResult<Self> {
        let defaults = PyDict::new(py);
        defaults.set_item("sparsity_level", sparsity_level)?;
        defaults.set_item("sparse_block_shape", sparse_block_shape)?;
        defaults.set_item("zeros_per_block", zeros_per_block)?;
        defaults.set_item("norm", norm)?;
        defaults.set_item("nan_policy", nan_policy)?;
        Self::build(
            "datanorm",
            &defaults,
            vec!["norm".into(), "nan_policy".into()],
        )
    }

    /// A sparsifier over the rule of kind `kind` in the library's registry (`"datanorm"`,
    /// `"magnitude"`, or one registered in Rust), its defaults from `defaults` (the rule's own
    /// for keys not given).
    #[staticmethod]
    fn rule(kind: &str, defaults: &Bound<'_, PyDict>) -> PyResult<Self> {
        Self::build(kind, defaults, Vec::new())
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

    /// The registry kinds (`Sparsifier.rule` takes any of them).
    #[staticmethod]
    fn kinds() -> Vec<String> {
        Registry::builtin().kinds().map(String::from).collect()
    }

    /// Adds or replaces `name` (PyTorch's `add_data` semantics, from the library), holding `data`
    /// (the caller's object) through the ExternalTensor seam.
    #[pyo3(signature = (name, data, config, reuse_mask=true))]
    fn add_data(
        &mut self,
        py: Python<'_>,
        name: &str,
        data: &Bound<'_, PyAny>,
        config: &Bound<'_, PyDict>,
        reuse_mask: bool,
    ) -> PyResult<()> {
        // The library checks the name first; do the same before looking at the data.
        data_sparsifier::validate_name(name).py()?;
        let store = ArrayStore::new(py, data, name)?;
        // Every Python array enters as one kind: PyTorch lets a name change type on replace
        // (an embedding's weight replaced by a plain tensor), which the library refuses between
        // kinds. The Python type is the object's own.
        let held = Data::External(DataKind::Tensor, Arc::new(store));
        match &mut self.inner {
            Inner::Rule(r) => {
                let patch = r.patch(config)?;
                r.sp.add_data_with(name, held, AddOptions { patch, reuse_mask })
                    .py()?;
            }
            Inner::Py(sp) => {
                let patch = PyConfig::from_dict(config)?;
                sp.add_data_with(name, held, AddOptions { patch, reuse_mask })
                    .py()?;
            }
        }
        self.remember(py, name, data.clone().unbind());
        Ok(())
    }

    /// Recomputes every mask. The GIL is released while the kernel reads each entry.
    fn step(&mut self) -> PyResult<()> {
        match &mut self.inner {
            Inner::Rule(r) => r.sp.step().py(),
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
            Inner::Rule(r) => r.dict(py, name, r.sp.config(name).py()?),
            Inner::Py(sp) => sp.config(name).py()?.to_dict(py),
        }
    }
    /// The default config as a new dict.
    fn defaults<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        match &self.inner {
            Inner::Rule(r) => r.dict(py, "defaults", r.sp.defaults()),
            Inner::Py(sp) => sp.defaults().to_dict(py),
        }
    }
    /// Sets one config key of `name` (what a data scheduler writes). A registry rule's values are
    /// checked at the next step, as the library does.
    fn set_config(&mut self, name: &str, key: &str, value: &Bound<'_, PyAny>) -> PyResult<()> {
        match &mut self.inner {
            Inner::Rule(r) => {
                let d = PyDict::new(value.py());
                d.set_item(key, value)?;
                let patch = r.patch(&d)?;
                merge(r.sp.config_mut(name).py()?, &patch);
            }
            Inner::Py(sp) => sp
                .config_mut(name)
                .py()?
                .set(key.to_string(), value.clone().unbind()),
        }
        Ok(())
    }
    /// Removes one config key of `name` (Python rules only; a registry rule's keys cannot be
    /// removed).
    fn del_config(&mut self, name: &str, key: &str) -> PyResult<()> {
        match &mut self.inner {
            Inner::Rule(r) => Err(PyTypeError::new_err(format!(
                "{} config keys cannot be deleted ({} are all required)",
                r.rule().name(),
                r.keys().join(", ")
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
        fn entry<C, S: Default>(
            py: Python<'_>,
            name: &str,
            data: &Bound<'_, PyAny>,
            mask: &PyReadonlyArrayDyn<'_, u8>,
            config: C,
            parametrized: bool,
        ) -> PyResult<EntryState<C, S>> {
            let data = tensor_from_py(py, data, name)?;
            let mask = Mask::from_dense_u8(mask.shape().to_vec(), mask.as_slice()?).py()?;
            Ok(EntryState {
                name: name.to_string(),
                kind: DataKind::Tensor,
                data,
                mask,
                config,
                state: S::default(),
                parametrized,
            })
        }
        let names: Vec<String> = entries.iter().map(|e| e.0.clone()).collect();
        match &mut self.inner {
            Inner::Rule(r) => {
                let mut out = Vec::new();
                for (name, data, mask, config, parametrized) in &entries {
                    let mut c = r.sp.defaults().clone();
                    merge(&mut c, &r.patch(config)?);
                    out.push(entry(py, name, data, mask, c, *parametrized)?);
                }
                load_entries(&mut r.sp, out, strict)?;
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
                self.add_data(py, &name, &obj, &PyDict::new(py), true)?;
            } else {
                // A squashed entry cannot be replaced; it stays in the library's storage and is
                // read back as a copy.
                self.objects.remove(&name);
            }
        }
        Ok(())
    }
}
