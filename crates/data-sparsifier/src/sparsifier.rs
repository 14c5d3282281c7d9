//! The sparsifier container: [`DataSparsifier`], generic over the one thing an implementer writes,
//! [`UpdateMask`].

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;

use crate::data::{Data, DataKind};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::handle::Handle;
use crate::mask::Mask;
use crate::tensor::{Tensor, TensorView};

/// A typed per-data configuration with a matching *patch* type for overrides.
///
/// The container keeps one full `Config` per name: the defaults with that name's patch applied.
/// Replacing a name applies the new patch on top of the old config, as PyTorch's `add_data` does with
/// its keyword arguments, but typed: a misspelled key is a compile error (or a serde error when the
/// patch is read from a file), never a silently ignored kwarg.
///
/// ```
/// use data_sparsifier::Config;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// struct Threshold { threshold: f64 }
/// #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
/// struct ThresholdPatch { threshold: Option<f64> }
///
/// impl Config for Threshold {
///     type Patch = ThresholdPatch;
///     fn apply(&mut self, p: &ThresholdPatch) {
///         if let Some(t) = p.threshold { self.threshold = t; }
///     }
/// }
/// let mut c = Threshold { threshold: 0.1 };
/// c.apply(&ThresholdPatch { threshold: Some(0.5) });
/// assert_eq!(c.threshold, 0.5);
/// ```
pub trait Config:
    Clone + fmt::Debug + PartialEq + Serialize + DeserializeOwned + Send + Sync + 'static
{
    /// Optional overrides of each field.
    type Patch: Clone
        + fmt::Debug
        + Default
        + PartialEq
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static;
    /// Overlays the fields the patch sets.
    fn apply(&mut self, patch: &Self::Patch);
}

/// The mask-update rule: the one thing a sparsifier implementer writes.
///
/// `update_mask` receives the **original** (unmasked) data of one entry, its config and its
/// per-name state, and rewrites `mask` in place. The mask has the data's shape and keeps everything
/// when the data is first added. It is recomputed from the data on every [`DataSparsifier::step`],
/// not accumulated.
///
/// A compact implementer that zeroes every `|x|` below a per-name threshold and refuses negative
/// thresholds. The full custom-sparsifier example, with per-name overrides and a squash, is in
/// [`DataSparsifier`]'s documentation and in `examples/custom_sparsifier.rs`.
///
/// ```
/// use data_sparsifier::{AddOptions, Config, DataSparsifier, Error, Mask, Result, Tensor, TensorView, UpdateMask};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// struct Threshold(f64);
/// impl Config for Threshold {
///     type Patch = Option<f64>;
///     fn apply(&mut self, p: &Option<f64>) { if let Some(t) = *p { self.0 = t; } }
/// }
///
/// struct ThresholdSparsifier;
/// impl UpdateMask for ThresholdSparsifier {
///     type Config = Threshold;
///     type State = ();
///     fn validate(&self, name: &str, c: &Threshold) -> Result<()> {
///         if c.0 >= 0.0 { Ok(()) } else { Err(Error::invalid_config(name, "threshold", c.0, "at least 0")) }
///     }
///     fn update_mask(&self, _name: &str, data: TensorView<'_>, c: &Threshold, _s: &mut (),
///                    mask: &mut Mask) -> Result<()> {
///         mask.keep_where(&data, |x| x.abs() >= c.0)
///     }
/// }
///
/// let mut sp = DataSparsifier::new(ThresholdSparsifier, Threshold(0.5)).unwrap();
/// sp.add_data("x", Tensor::from_vec(vec![0.1f32, -0.7, 0.4, 2.0], [4]).unwrap()).unwrap();
/// sp.step().unwrap();
/// assert_eq!(sp.get_mask("x").unwrap().to_dense_u8(), vec![0, 1, 0, 1]);
/// let y = Tensor::from_vec(vec![1.0f32], [1]).unwrap();
/// assert!(sp.add_data_with("y", y, AddOptions::patched(Some(-1.0))).is_err()); // validate
/// assert!(DataSparsifier::new(ThresholdSparsifier, Threshold(-1.0)).is_err());
/// ```
pub trait UpdateMask: Send + Sync {
    /// The per-data configuration.
    type Config: Config;
    /// Per-name state kept across steps and saved with the sparsifier (e.g. a step count). Use `()`
    /// for none.
    type State: Clone
        + fmt::Debug
        + Default
        + PartialEq
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static;

    /// A short name for `Display` and the saved state.
    fn name(&self) -> &str {
        "DataSparsifier"
    }
    /// The config schema (keys, types, ranges, defaults, docs) that front ends derive their
    /// flags, file keys and messages from when this rule is registered
    /// ([`TypedRule`](crate::rule::TypedRule)). `None` (the default): an open schema, any key is
    /// passed to [`validate`](Self::validate).
    fn schema(&self) -> Option<crate::rule::Schema> {
        None
    }
    /// The config in one short phrase, for reports. The default is its JSON.
    fn describe(&self, config: &Self::Config) -> String {
        serde_json::to_string(config).unwrap_or_default()
    }
    /// A warning about a valid config that is almost always a slip, as a phrase (front ends show
    /// it with the names it applies to). The default: none.
    fn lint(&self, config: &Self::Config) -> Option<String> {
        let _ = config;
        None
    }
    /// Whether data of more than two dims is accepted. When false (the default), adding such data
    /// is an [`Error::UnsupportedShape`].
    fn supports_nd(&self) -> bool {
        false
    }
    /// Checks a config before it is stored (at `new`, `add_data`, and before each `step`).
    fn validate(&self, name: &str, config: &Self::Config) -> Result<()> {
        let _ = (name, config);
        Ok(())
    }
    /// Rewrites `mask` for `data`.
    fn update_mask(
        &self,
        name: &str,
        data: TensorView<'_>,
        config: &Self::Config,
        state: &mut Self::State,
        mask: &mut Mask,
    ) -> Result<()>;
}

/// Which version of an entry's data to read.
///
/// ```
/// use data_sparsifier::{DataNormConfig, DataNormSparsifier, Tensor, Version};
/// let mut sp = DataNormSparsifier::data_norm(DataNormConfig {
///     sparse_block_shape: (1, 1),
///     ..Default::default()
/// })
/// .unwrap();
/// sp.add_data("x", Tensor::from_vec(vec![1.0f32, -4.0], [2]).unwrap()).unwrap();
/// sp.step().unwrap();
/// assert_eq!(sp.get_data("x", Version::Original).unwrap().to_f64_vec(), vec![1.0, -4.0]);
/// assert_eq!(sp.get_data("x", Version::Masked).unwrap().to_f64_vec(), vec![0.0, -4.0]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The data as added, without the mask. Gone after a squash.
    Original,
    /// `mask · data`.
    Masked,
}

/// How [`DataSparsifier::add_data_with`] adds or replaces data: PyTorch's `add_data(name, data,
/// reuse_mask=True, **config)` keyword arguments, as named fields.
///
/// ```
/// use data_sparsifier::{AddOptions, DataNormPatch};
/// let o: AddOptions<DataNormPatch> = AddOptions::default();
/// assert!(o.reuse_mask); // PyTorch's default
/// let o = AddOptions { reuse_mask: false, ..AddOptions::patched(DataNormPatch::new().sparsity_level(0.9)) };
/// assert_eq!(o.patch.sparsity_level, Some(0.9));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct AddOptions<P> {
    /// Overrides of the config (of the defaults for a new name, of the old config when replacing).
    pub patch: P,
    /// When replacing, keep the old mask (its shape must then match the new data); otherwise
    /// start from an all-ones mask. Default `true`, as in PyTorch.
    pub reuse_mask: bool,
}

impl<P> AddOptions<P> {
    /// The options with this patch and the default `reuse_mask = true`.
    pub fn patched(patch: P) -> Self {
        AddOptions {
            patch,
            reuse_mask: true,
        }
    }
}

impl<P: Default> Default for AddOptions<P> {
    fn default() -> Self {
        AddOptions::patched(P::default())
    }
}

/// How [`DataSparsifier::squash_mask`] squashes: PyTorch's `leave_parametrized` keyword.
///
/// ```
/// use data_sparsifier::SquashOptions;
/// assert!(SquashOptions::default().leave_parametrized); // PyTorch's default
/// let keep_values = SquashOptions { leave_parametrized: false };
/// # let _ = keep_values;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SquashOptions {
    /// Write `mask · data` into the data (`true`, the default), or leave the data untouched and
    /// only drop the mask (`false`).
    pub leave_parametrized: bool,
}

impl Default for SquashOptions {
    fn default() -> Self {
        SquashOptions {
            leave_parametrized: true,
        }
    }
}

/// How [`DataSparsifier::load_state_dict`] and [`DataSparsifier::load_state`] load: PyTorch's
/// `strict` keyword.
///
/// ```
/// use data_sparsifier::LoadOptions;
/// assert!(LoadOptions::default().strict); // PyTorch's default
/// let merge = LoadOptions { strict: false };
/// # let _ = merge;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadOptions {
    /// Hold exactly the state's entries (`true`, the default), or keep the names the state does
    /// not have (`false`).
    pub strict: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { strict: true }
    }
}

/// One entry: a name's data handle, kind, config, mask and state.
pub(crate) struct Entry<U: UpdateMask> {
    pub(crate) name: String,
    pub(crate) kind: DataKind,
    pub(crate) data: Handle,
    pub(crate) config: U::Config,
    pub(crate) mask: Mask,
    pub(crate) state: U::State,
    pub(crate) parametrized: bool,
}

impl<U: UpdateMask> Entry<U> {
    fn view(&self) -> MaskedView<'_> {
        MaskedView {
            name: &self.name,
            data: &self.data,
            mask: &self.mask,
            parametrized: self.parametrized,
        }
    }
    /// Errors unless the mask still has the data's shape. The data can change shape behind the
    /// sparsifier's back (another holder of a parameter calling `set`), and a mask can be replaced
    /// by hand through `get_mask_mut`; every use of the pair checks first.
    pub(crate) fn check_mask_fits(&self) -> Result<()> {
        check_mask_fits(&self.name, &self.mask, &self.data.shape())
    }
}

/// Errors unless the mask of entry `name` has the data's `shape`.
pub(crate) fn check_mask_fits(name: &str, mask: &Mask, shape: &[usize]) -> Result<()> {
    if mask.shape() != shape {
        return Err(Error::ShapeMismatch {
            what: format!(
                "the mask of {name:?} and its data (the data or the mask was given another shape \
                 after add_data; re-add the data with reuse_mask = false for a new mask)"
            ),
            expected: shape.to_vec(),
            actual: mask.shape().to_vec(),
        });
    }
    Ok(())
}

/// The sparsifier: owns a bit-packed mask for every named piece of data added to it, and updates the
/// masks with `U` on each [`step`](Self::step).
///
/// ```
/// use data_sparsifier::{SquashOptions, AddOptions, Config, DataSparsifier, Mask, Parameter, Tensor, TensorView, UpdateMask, Version};
/// use serde::{Deserialize, Serialize};
///
/// /// Zeroes every |x| below a per-name threshold.
/// struct ThresholdSparsifier;
///
/// #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
/// struct Threshold { threshold: f64 }
/// #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
/// struct ThresholdPatch { threshold: Option<f64> }
/// impl Config for Threshold {
///     type Patch = ThresholdPatch;
///     fn apply(&mut self, p: &ThresholdPatch) {
///         if let Some(t) = p.threshold { self.threshold = t; }
///     }
/// }
///
/// impl UpdateMask for ThresholdSparsifier {
///     type Config = Threshold;
///     type State = ();
///     fn update_mask(&self, _name: &str, data: TensorView<'_>, c: &Threshold, _s: &mut (), mask: &mut Mask)
///         -> data_sparsifier::Result<()> {
///         mask.keep_where(&data, |x| x.abs() >= c.threshold)
///     }
/// }
///
/// let mut sp = DataSparsifier::new(ThresholdSparsifier, Threshold { threshold: 0.5 }).unwrap();
/// let weight = Parameter::new(Tensor::from_vec(vec![0.1f32, -0.9, 0.3, 2.0], [2, 2]).unwrap());
/// sp.add_data("weight", &weight).unwrap();
/// let bias = Tensor::from_vec(vec![0.1f32, 0.2], [2]).unwrap();
/// let patch = ThresholdPatch { threshold: Some(0.15) };
/// sp.add_data_with("bias", bias, AddOptions::patched(patch)).unwrap();
/// sp.step().unwrap();
/// assert_eq!(sp.get_mask("weight").unwrap().to_dense_u8(), vec![0, 1, 0, 1]);
/// assert_eq!(sp.get_mask("bias").unwrap().to_dense_u8(), vec![0, 1]);
///
/// sp.squash_mask(None, SquashOptions::default()).unwrap();
/// // The caller's parameter now holds the sparsified values...
/// assert_eq!(weight.read().as_slice::<f32>().unwrap(), &[0.0, -0.9, 0.0, 2.0]);
/// // ...and the original is gone, as in PyTorch.
/// assert!(sp.get_data("weight", Version::Original).is_err());
/// ```
pub struct DataSparsifier<U: UpdateMask> {
    updater: U,
    defaults: U::Config,
    entries: Vec<Entry<U>>,
    enable_mask_update: bool,
    step_count: u64,
}

/// A lazy view of one entry's masked data: `mask · data` while the entry is parametrized, and the
/// data as it is once squashed (PyTorch's `getattr(container, name)`: after a squash with
/// `leave_parametrized` the data already holds `mask · data`; after one without, it is the untouched
/// data and the mask no longer applies). Nothing is copied until [`to_tensor`](Self::to_tensor);
/// reads see the data as it is at that moment.
///
/// ```
/// use data_sparsifier::{DataNormConfig, DataNormSparsifier, Tensor};
/// let mut sp = DataNormSparsifier::data_norm(DataNormConfig {
///     sparse_block_shape: (1, 1),
///     ..Default::default()
/// })
/// .unwrap();
/// let t = Tensor::from_vec(vec![1.0f32, -4.0, 0.5, 3.0], [2, 2]).unwrap();
/// sp.add_data("x", t).unwrap();
/// sp.step().unwrap();
/// let view = sp.masked("x").unwrap();
/// assert_eq!(view.get_f64(0), Some(0.0)); // pruned
/// assert_eq!(view.to_tensor().unwrap().to_f64_vec(), vec![0.0, -4.0, 0.0, 3.0]);
/// ```
pub struct MaskedView<'a> {
    name: &'a str,
    data: &'a Handle,
    mask: &'a Mask,
    parametrized: bool,
}

impl MaskedView<'_> {
    /// The shape.
    pub fn shape(&self) -> Vec<usize> {
        self.data.shape()
    }
    /// The dtype.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }
    /// The mask.
    pub fn mask(&self) -> &Mask {
        self.mask
    }
    /// Whether the mask is still applied on read (false once the entry is squashed).
    ///
    /// ```
    /// use data_sparsifier::{DType, DataNormConfig, DataNormSparsifier, Tensor};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// sp.add_data("x", Tensor::zeros(DType::F16, [2, 4])).unwrap();
    /// let view = sp.masked("x").unwrap();
    /// assert!(view.is_parametrized());
    /// assert_eq!((view.shape(), view.dtype()), (vec![2, 4], DType::F16));
    /// assert_eq!(view.mask().count_kept(), 8); // a new entry keeps everything
    /// ```
    pub fn is_parametrized(&self) -> bool {
        self.parametrized
    }
    /// Runs `f` on a zero-copy view of the unmasked data (after a squash: the squashed data).
    ///
    /// ```
    /// use data_sparsifier::{DataNormConfig, DataNormSparsifier, Tensor};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig {
    ///     sparse_block_shape: (1, 1),
    ///     ..Default::default()
    /// })
    /// .unwrap();
    /// sp.add_data("x", Tensor::from_vec(vec![1.0f32, -4.0], [2]).unwrap()).unwrap();
    /// sp.step().unwrap();
    /// let view = sp.masked("x").unwrap();
    /// // The mask zeroes element 0, but the unmasked data still holds it.
    /// let first = view.with_data(|d| Ok(d.as_slice::<f32>().unwrap()[0])).unwrap();
    /// assert_eq!((first, view.get_f64(0)), (1.0, Some(0.0)));
    /// ```
    pub fn with_data<R>(&self, f: impl FnOnce(TensorView<'_>) -> Result<R>) -> Result<R> {
        self.data.read(f)
    }
    /// Element `i` of the masked data, widened to f64. `None` past the end, or if the data and the
    /// mask no longer have one shape (see [`to_tensor`](Self::to_tensor) for the error).
    pub fn get_f64(&self, i: usize) -> Option<f64> {
        self.data
            .read(|d| {
                if self.parametrized {
                    check_mask_fits(self.name, self.mask, d.shape())?;
                }
                Ok(d.data().get_f64(i))
            })
            .ok()
            .flatten()
            .map(|v| {
                if !self.parametrized || self.mask.get(i) {
                    v
                } else {
                    0.0
                }
            })
    }
    /// Materializes the masked data as a new tensor.
    ///
    /// Errors with [`Error::ShapeMismatch`] if the data was given another shape after it was added
    /// (e.g. by [`Parameter::set`](crate::Parameter::set)) so that the mask no longer fits, as
    /// PyTorch's parametrization raises.
    ///
    /// ```
    /// use data_sparsifier::{DType, DataNormConfig, DataNormSparsifier, Error, Parameter, Tensor};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// let w = Parameter::new(Tensor::zeros(DType::F32, [2, 4]));
    /// sp.add_data("w", &w).unwrap();
    /// assert_eq!(sp.masked("w").unwrap().to_tensor().unwrap().shape(), &[2, 4]);
    /// w.set(Tensor::zeros(DType::F32, [3, 4])); // another holder reshapes the data
    /// let err = sp.masked("w").unwrap().to_tensor().unwrap_err();
    /// assert!(matches!(err, Error::ShapeMismatch { .. }));
    /// ```
    pub fn to_tensor(&self) -> Result<Tensor> {
        self.data.read(|d| {
            if !self.parametrized {
                return Ok(d.to_tensor());
            }
            check_mask_fits(self.name, self.mask, d.shape())?;
            let mut out = Tensor::zeros(d.dtype(), d.shape().to_vec());
            crate::with_dtype!(d.dtype(), T => {
                if let (Some(src), Some(dst)) = (d.as_slice::<T>(), out.as_slice_mut::<T>()) {
                    self.mask.apply_into(src, dst);
                }
            });
            Ok(out)
        })
    }
}

impl fmt::Debug for MaskedView<'_> {
    /// A summary (name, shape, dtype, density); it does not copy the data.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaskedView")
            .field("name", &self.name)
            .field("shape", &self.shape())
            .field("dtype", &self.dtype())
            .field("density", &self.mask.density())
            .field("parametrized", &self.parametrized)
            .finish()
    }
}

/// Checks a data name: non-empty, no '.', no path or control characters that break a file layout.
///
/// ```
/// use data_sparsifier::{validate_name, Error};
/// assert!(validate_name("emb_weight").is_ok());
/// assert!(matches!(validate_name("emb.weight"), Err(Error::InvalidName { .. })));
/// assert!(validate_name("a/b").is_err());
/// assert!(validate_name("").is_err());
/// ```
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "names must not be empty"
    } else if name.contains('.') {
        "names must not contain '.'; replace it with '_' (e.g. \"emb.weight\" -> \"emb_weight\")"
    } else if name.contains('/') {
        "names must not contain '/', which the saved-state layout uses as a separator"
    } else if name.chars().any(char::is_control) {
        "names must not contain control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_string(),
        reason,
    })
}

impl<U: UpdateMask> DataSparsifier<U> {
    /// A sparsifier with an update rule and default config. The defaults are validated.
    ///
    /// ```
    /// use data_sparsifier::{norm::DataNorm, DataNormConfig, DataSparsifier};
    /// let sp = DataSparsifier::new(DataNorm::new(), DataNormConfig::default()).unwrap();
    /// assert!(sp.is_empty());
    /// let bad = DataNormConfig { sparse_block_shape: (0, 4), ..Default::default() };
    /// assert!(DataSparsifier::new(DataNorm::new(), bad).is_err());
    /// ```
    pub fn new(updater: U, defaults: U::Config) -> Result<Self> {
        updater.validate("defaults", &defaults)?;
        Ok(DataSparsifier {
            updater,
            defaults,
            entries: Vec::new(),
            enable_mask_update: true,
            step_count: 0,
        })
    }

    /// Adds each `(name, data)` with the default config (PyTorch's `data_list` constructor argument).
    ///
    /// ```
    /// use data_sparsifier::{DType, DataNormConfig, DataNormSparsifier, Tensor};
    /// let sp = DataNormSparsifier::data_norm(DataNormConfig::default())
    ///     .unwrap()
    ///     .with_data([("a", Tensor::zeros(DType::F32, [4])), ("b", Tensor::zeros(DType::F32, [2, 4]))])
    ///     .unwrap();
    /// assert_eq!(sp.names().collect::<Vec<_>>(), ["a", "b"]);
    /// ```
    pub fn with_data<N, D>(mut self, data: impl IntoIterator<Item = (N, D)>) -> Result<Self>
    where
        N: AsRef<str>,
        D: Into<Data>,
    {
        for (n, d) in data {
            self.add_data(n.as_ref(), d)?;
        }
        Ok(self)
    }

    /// The update rule.
    pub fn updater(&self) -> &U {
        &self.updater
    }
    /// The update rule, mutably (e.g. to change a sparsifier-wide setting).
    pub fn updater_mut(&mut self) -> &mut U {
        &mut self.updater
    }
    /// The default config.
    ///
    /// ```
    /// use data_sparsifier::{DataNormConfig, DataNormSparsifier, UpdateMask};
    /// let cfg = DataNormConfig { sparsity_level: 0.8, ..Default::default() };
    /// let sp = DataNormSparsifier::data_norm(cfg.clone()).unwrap();
    /// assert_eq!(sp.defaults(), &cfg);
    /// assert_eq!(sp.updater().name(), "DataNormSparsifier");
    /// ```
    pub fn defaults(&self) -> &U::Config {
        &self.defaults
    }
    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Whether `name` is held.
    pub fn contains(&self, name: &str) -> bool {
        self.position(name).is_some()
    }
    /// The names, in insertion order.
    ///
    /// ```
    /// use data_sparsifier::{DType, DataKind, DataNormConfig, DataNormSparsifier, Parameter, Tensor};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// sp.add_data("b", Tensor::zeros(DType::F32, [4])).unwrap();
    /// sp.add_data("a", Parameter::new(Tensor::zeros(DType::F32, [4]))).unwrap();
    /// assert_eq!(sp.names().collect::<Vec<_>>(), ["b", "a"]);
    /// assert_eq!((sp.len(), sp.contains("a"), sp.contains("c")), (2, true, false));
    /// assert_eq!(sp.kind("a").unwrap(), DataKind::Parameter);
    /// assert_eq!(sp.configs().count(), 2);
    /// ```
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.name.as_str())
    }
    /// `(name, config)` pairs, in insertion order.
    pub fn configs(&self) -> impl Iterator<Item = (&str, &U::Config)> {
        self.entries.iter().map(|e| (e.name.as_str(), &e.config))
    }
    /// Whether `step` updates masks (PyTorch's `enable_mask_update`).
    pub fn mask_update_enabled(&self) -> bool {
        self.enable_mask_update
    }
    /// Turns mask updates on or off; while off, [`step`](Self::step) does nothing.
    pub fn set_mask_update_enabled(&mut self, enabled: bool) {
        self.enable_mask_update = enabled;
    }
    /// How many times [`step`](Self::step) has returned `Ok` on this sparsifier, counting steps
    /// while mask updates were disabled (PyTorch's `_step_count`, which a data scheduler installs; a
    /// data scheduler reads it to warn when it is stepped first). Not saved with the state.
    ///
    /// ```
    /// use data_sparsifier::{DataNormConfig, DataNormSparsifier};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// sp.step().unwrap();
    /// sp.set_mask_update_enabled(false);
    /// sp.step().unwrap(); // counted, though no mask is updated
    /// assert_eq!(sp.step_count(), 2);
    /// ```
    pub fn step_count(&self) -> u64 {
        self.step_count
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.name == name)
    }
    fn unknown(&self, name: &str) -> Error {
        let mut known: Vec<&str> = self.names().take(20).collect();
        if self.entries.len() > 20 {
            known.push("...");
        }
        Error::UnknownName {
            name: name.to_string(),
            known: if known.is_empty() {
                "none".into()
            } else {
                known.join(", ")
            },
        }
    }
    pub(crate) fn entry(&self, name: &str) -> Result<&Entry<U>> {
        self.position(name)
            .map(|i| &self.entries[i])
            .ok_or_else(|| self.unknown(name))
    }
    fn entry_mut(&mut self, name: &str) -> Result<&mut Entry<U>> {
        match self.position(name) {
            Some(i) => Ok(&mut self.entries[i]),
            None => Err(self.unknown(name)),
        }
    }

    /// The config of `name`.
    pub fn config(&self, name: &str) -> Result<&U::Config> {
        Ok(&self.entry(name)?.config)
    }
    /// The config of `name`, mutably (what a scheduler writes). It is validated at the next `step`.
    ///
    /// ```
    /// use data_sparsifier::{DType, DataNormConfig, DataNormSparsifier, Tensor};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// sp.add_data("x", Tensor::zeros(DType::F32, [2, 4])).unwrap();
    /// sp.config_mut("x").unwrap().sparsity_level = 1.0;
    /// assert_eq!(sp.config("x").unwrap().sparsity_level, 1.0);
    /// sp.config_mut("x").unwrap().sparsity_level = 7.0; // out of range...
    /// assert!(sp.step().is_err()); // ...refused at the next step
    /// ```
    pub fn config_mut(&mut self, name: &str) -> Result<&mut U::Config> {
        Ok(&mut self.entry_mut(name)?.config)
    }
    /// Every config, mutably, in insertion order.
    ///
    /// ```
    /// use data_sparsifier::{DType, DataNormConfig, DataNormSparsifier, Tensor};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// sp.add_data("a", Tensor::zeros(DType::F32, [4])).unwrap();
    /// sp.add_data("b", Tensor::zeros(DType::F32, [4])).unwrap();
    /// for (_, c) in sp.configs_mut() {
    ///     c.sparsity_level = 0.25;
    /// }
    /// assert!(sp.configs().all(|(_, c)| c.sparsity_level == 0.25));
    /// ```
    pub fn configs_mut(&mut self) -> impl Iterator<Item = (&str, &mut U::Config)> {
        self.entries
            .iter_mut()
            .map(|e| (e.name.as_str(), &mut e.config))
    }
    /// The kind of `name`.
    pub fn kind(&self, name: &str) -> Result<DataKind> {
        Ok(self.entry(name)?.kind)
    }
    /// The per-name implementer state.
    ///
    /// ```
    /// use data_sparsifier::{DType, DataNormConfig, DataSparsifier, Mask, Result, Tensor, TensorView, UpdateMask};
    ///
    /// /// Keeps everything, counting its updates per name.
    /// struct Counting;
    /// impl UpdateMask for Counting {
    ///     type Config = DataNormConfig;
    ///     type State = u32;
    ///     fn update_mask(&self, _: &str, _: TensorView<'_>, _: &DataNormConfig, n: &mut u32,
    ///                    _: &mut Mask) -> Result<()> {
    ///         *n += 1;
    ///         Ok(())
    ///     }
    /// }
    /// let mut sp = DataSparsifier::new(Counting, DataNormConfig::default()).unwrap();
    /// sp.add_data("x", Tensor::zeros(DType::F32, [2])).unwrap();
    /// sp.step().unwrap();
    /// sp.step().unwrap();
    /// assert_eq!(*sp.state("x").unwrap(), 2);
    /// *sp.state_mut("x").unwrap() = 0;
    /// assert_eq!(*sp.state("x").unwrap(), 0);
    /// ```
    pub fn state(&self, name: &str) -> Result<&U::State> {
        Ok(&self.entry(name)?.state)
    }
    /// The per-name implementer state, mutably.
    pub fn state_mut(&mut self, name: &str) -> Result<&mut U::State> {
        Ok(&mut self.entry_mut(name)?.state)
    }
    /// Whether `name` still has its mask applied lazily (false after a squash).
    ///
    /// ```
    /// use data_sparsifier::{SquashOptions, DType, DataNormConfig, DataNormSparsifier, Tensor};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// sp.add_data("x", Tensor::zeros(DType::F32, [4])).unwrap();
    /// assert!(sp.is_parametrized("x").unwrap());
    /// sp.squash_mask(None, SquashOptions::default()).unwrap();
    /// assert!(!sp.is_parametrized("x").unwrap());
    /// ```
    pub fn is_parametrized(&self, name: &str) -> Result<bool> {
        Ok(self.entry(name)?.parametrized)
    }

    /// Adds `data` under `name` with the default config, or replaces an existing entry reusing its
    /// mask and config. Returns the sparsified view. See [`add_data_with`](Self::add_data_with).
    ///
    /// ```
    /// use data_sparsifier::{DataNormConfig, DataNormSparsifier, Tensor, Version};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig {
    ///     sparse_block_shape: (1, 1),
    ///     ..Default::default()
    /// })
    /// .unwrap();
    /// sp.add_data("x", Tensor::from_vec(vec![1.0f32, -4.0], [2]).unwrap()).unwrap();
    /// sp.step().unwrap();
    /// // Replacing keeps the mask: the new data is read through it.
    /// let view = sp.add_data("x", Tensor::from_vec(vec![5.0f32, 6.0], [2]).unwrap()).unwrap();
    /// assert_eq!(view.to_tensor().unwrap().to_f64_vec(), vec![0.0, 6.0]);
    /// // ...so it must have the old shape.
    /// assert!(sp.add_data("x", Tensor::from_vec(vec![1.0f32; 3], [3]).unwrap()).is_err());
    /// ```
    pub fn add_data(&mut self, name: &str, data: impl Into<Data>) -> Result<MaskedView<'_>> {
        self.add_data_with(name, data, AddOptions::default())
    }

    /// Adds `data` under `name`, its config being the defaults overlaid with `patch`.
    ///
    /// If `name` exists, the entry is replaced: the config becomes the **old** config overlaid with
    /// `patch`; with `reuse_mask` the old mask is kept (the new data must have the old shape), else a
    /// fresh all-keep mask is made. The replaced data is not modified. A replace that fails leaves the
    /// old entry intact, and a name cannot change kind (parameter, embedding, ...).
    ///
    /// Errors: an invalid name ([`validate_name`]), a kind change, a shape mismatch with
    /// `reuse_mask`, a squashed entry (its original is gone), unsupported N-D data, an invalid config.
    ///
    /// ```
    /// use data_sparsifier::{AddOptions, DType, DataNormConfig, DataNormPatch, DataNormSparsifier, Parameter, Tensor};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// let patch = DataNormPatch { sparsity_level: Some(0.9), ..Default::default() };
    /// sp.add_data_with("x", Tensor::zeros(DType::F32, [2, 4]), AddOptions::patched(patch)).unwrap();
    /// assert_eq!(sp.config("x").unwrap().sparsity_level, 0.9);
    /// assert_eq!(sp.config("x").unwrap().sparse_block_shape, (1, 4)); // the default
    ///
    /// // Replacing: the old config is patched, and a fresh mask allows a new shape.
    /// let patch = DataNormPatch { sparse_block_shape: Some((1, 2)), ..Default::default() };
    /// let fresh = AddOptions { patch, reuse_mask: false };
    /// sp.add_data_with("x", Tensor::zeros(DType::F32, [3, 2]), fresh).unwrap();
    /// assert_eq!(sp.config("x").unwrap().sparsity_level, 0.9);
    /// assert_eq!(sp.get_mask("x").unwrap().shape(), &[3, 2]);
    /// // A name cannot change kind.
    /// let p = Parameter::new(Tensor::zeros(DType::F32, [3, 2]));
    /// assert!(sp.add_data_with("x", p, AddOptions::default()).is_err());
    /// ```
    pub fn add_data_with(
        &mut self,
        name: &str,
        data: impl Into<Data>,
        options: AddOptions<<U::Config as Config>::Patch>,
    ) -> Result<MaskedView<'_>> {
        let AddOptions { patch, reuse_mask } = options;
        let patch = &patch;
        validate_name(name)?;
        let data = data.into();
        let kind = data.kind();
        let handle = data.into_handle();
        let shape = handle.shape();
        if shape.len() > 2 && !self.updater.supports_nd() {
            return Err(Error::UnsupportedShape {
                name: name.to_string(),
                shape,
            });
        }
        let pos = self.position(name);
        let (config, mask) = match pos {
            Some(i) => {
                let old = &self.entries[i];
                if old.kind != kind {
                    return Err(Error::KindChange {
                        name: name.to_string(),
                        existing: old.kind.as_str(),
                        new: kind.as_str(),
                    });
                }
                if !old.parametrized {
                    return Err(Error::Squashed {
                        name: name.to_string(),
                    });
                }
                let mut config = old.config.clone();
                config.apply(patch);
                let mask = if reuse_mask {
                    old.mask.check_shape(name, &shape).map_err(|_| Error::ShapeMismatch {
                        what: format!("replacement data {name:?} with reuse_mask = true (pass reuse_mask = false to start a new mask)"),
                        expected: old.mask.shape().to_vec(),
                        actual: shape.clone(),
                    })?;
                    old.mask.clone()
                } else {
                    Mask::ones(shape)
                };
                (config, mask)
            }
            None => {
                let mut config = self.defaults.clone();
                config.apply(patch);
                (config, Mask::ones(shape))
            }
        };
        self.updater.validate(name, &config)?;
        let entry = Entry {
            name: name.to_string(),
            kind,
            data: handle,
            config,
            mask,
            state: pos
                .map(|i| self.entries[i].state.clone())
                .unwrap_or_default(),
            parametrized: true,
        };
        let i = match pos {
            Some(i) => {
                self.entries[i] = entry;
                i
            }
            None => {
                self.entries.push(entry);
                self.entries.len() - 1
            }
        };
        Ok(self.entries[i].view())
    }

    /// Removes `name`, returning its data handle. The data is left as it is now (masked only if it
    /// was squashed).
    ///
    /// ```
    /// use data_sparsifier::{DataNormConfig, DataNormSparsifier, Parameter, Tensor};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// let w = Parameter::new(Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0], [4]).unwrap());
    /// sp.add_data("w", &w).unwrap();
    /// sp.step().unwrap();
    /// let handle = sp.remove_data("w").unwrap();
    /// assert!(handle.as_parameter().unwrap().ptr_eq(&w)); // the caller's own handle
    /// assert_eq!(w.read().to_f64_vec(), vec![1.0, 2.0, 3.0, 4.0]); // not squashed: untouched
    /// assert!(!sp.contains("w"));
    /// assert!(sp.remove_data("w").is_err());
    /// ```
    pub fn remove_data(&mut self, name: &str) -> Result<Handle> {
        let i = self.position(name).ok_or_else(|| self.unknown(name))?;
        Ok(self.entries.remove(i).data)
    }

    /// Recomputes every mask from the original data, in insertion order, unless mask updates are
    /// disabled.
    ///
    /// Before any mask changes, every entry is checked: its config is valid, it is not squashed
    /// ([`Error::Squashed`]: its original data no longer exists), and its mask still has its data's
    /// shape. If `update_mask` itself fails for an entry (DataNorm on NaN data, say), the error
    /// names that entry, the entries before it keep their new masks (as in PyTorch's loop) and the
    /// step count does not advance.
    ///
    /// ```
    /// use data_sparsifier::{DataNormConfig, DataNormSparsifier, Tensor};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// sp.add_data("x", Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [2, 4]).unwrap())
    ///     .unwrap();
    /// sp.step().unwrap(); // half of the two (1, 4) blocks: the first row
    /// assert_eq!(sp.get_mask("x").unwrap().to_dense_u8(), vec![0, 0, 0, 0, 1, 1, 1, 1]);
    /// sp.set_mask_update_enabled(false);
    /// sp.get_mask_mut("x").unwrap().fill(true);
    /// sp.step().unwrap(); // skipped
    /// assert_eq!(sp.get_mask("x").unwrap().count_kept(), 8);
    /// ```
    pub fn step(&mut self) -> Result<()> {
        if !self.enable_mask_update {
            self.step_count += 1;
            return Ok(());
        }
        for e in &self.entries {
            if !e.parametrized {
                return Err(Error::Squashed {
                    name: e.name.clone(),
                });
            }
            self.updater.validate(&e.name, &e.config)?;
            e.check_mask_fits()?;
        }
        let updater = &self.updater;
        for e in &mut self.entries {
            let Entry {
                name,
                data,
                config,
                state,
                mask,
                ..
            } = e;
            data.read(|view| {
                updater.update_mask(name, view, config, state, mask)?;
                check_mask_fits(name, mask, view.shape())
            })
            .map_err(|err| err.with_data(name))?;
        }
        self.step_count += 1;
        Ok(())
    }

    /// The mask of `name` (it survives a squash).
    pub fn get_mask(&self, name: &str) -> Result<&Mask> {
        Ok(&self.entry(name)?.mask)
    }
    /// The mask of `name`, mutably, to set it by hand (PyTorch's in-place `mask[...] = ...` on
    /// `get_mask`). A mask of another shape assigned here is refused at the next read, step, squash
    /// or save with [`Error::ShapeMismatch`].
    ///
    /// ```
    /// use data_sparsifier::{DataNormConfig, DataNormSparsifier, Tensor, Version};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// sp.add_data("x", Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3]).unwrap()).unwrap();
    /// sp.get_mask_mut("x").unwrap().set(1, false);
    /// assert_eq!(sp.get_data("x", Version::Masked).unwrap().to_f64_vec(), vec![1.0, 0.0, 3.0]);
    /// ```
    pub fn get_mask_mut(&mut self, name: &str) -> Result<&mut Mask> {
        Ok(&mut self.entry_mut(name)?.mask)
    }

    /// A copy of the data of `name`: the original (an error after a squash) or `mask · data`.
    ///
    /// ```
    /// use data_sparsifier::{SquashOptions, DataNormConfig, DataNormSparsifier, Error, Tensor, Version};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// sp.add_data("x", Tensor::from_vec(vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0], [2, 4]).unwrap())
    ///     .unwrap();
    /// sp.step().unwrap(); // prunes the first row's block
    /// let masked = sp.get_data("x", Version::Masked).unwrap();
    /// assert_eq!(masked.to_f64_vec(), vec![0.0, 0.0, 0.0, 0.0, 5.0, 6.0, 7.0, 8.0]);
    /// sp.squash_mask(None, SquashOptions::default()).unwrap();
    /// assert!(matches!(sp.get_data("x", Version::Original), Err(Error::Squashed { .. })));
    /// assert_eq!(sp.get_data("x", Version::Masked).unwrap(), masked);
    /// ```
    pub fn get_data(&self, name: &str, version: Version) -> Result<Tensor> {
        match version {
            Version::Original => self.with_original(name, |v| Ok(v.to_tensor())),
            Version::Masked => self.masked(name)?.to_tensor(),
        }
    }
    /// Runs `f` on a zero-copy view of the original data of `name` (an error after a squash).
    ///
    /// ```
    /// use data_sparsifier::{DataNormConfig, DataNormSparsifier, Tensor};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// sp.add_data("x", Tensor::from_vec(vec![3.0f32, -1.0, 2.0, 0.5], [1, 4]).unwrap()).unwrap();
    /// sp.step().unwrap();
    /// let max = sp
    ///     .with_original("x", |v| Ok(v.as_slice::<f32>().unwrap().iter().copied().fold(f32::MIN, f32::max)))
    ///     .unwrap();
    /// assert_eq!(max, 3.0); // the mask does not apply to the original
    /// ```
    pub fn with_original<R>(
        &self,
        name: &str,
        f: impl FnOnce(TensorView<'_>) -> Result<R>,
    ) -> Result<R> {
        let e = self.entry(name)?;
        if !e.parametrized {
            return Err(Error::Squashed {
                name: name.to_string(),
            });
        }
        e.data.read(f)
    }
    /// A lazy view of the masked data of `name`: `mask · data` while parametrized, the data as it
    /// is after a squash (see [`MaskedView`]).
    ///
    /// ```
    /// use data_sparsifier::{SquashOptions, DataNormConfig, DataNormSparsifier, Tensor};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig {
    ///     sparse_block_shape: (1, 1),
    ///     ..Default::default()
    /// })
    /// .unwrap();
    /// sp.add_data("x", Tensor::from_vec(vec![1.0f32, -4.0], [2]).unwrap()).unwrap();
    /// sp.step().unwrap();
    /// assert_eq!(sp.masked("x").unwrap().to_tensor().unwrap().to_f64_vec(), vec![0.0, -4.0]);
    /// // Squashed without leave_parametrized: the mask is detached, the data read as it is.
    /// sp.squash_mask(None, SquashOptions { leave_parametrized: false }).unwrap();
    /// assert_eq!(sp.masked("x").unwrap().to_tensor().unwrap().to_f64_vec(), vec![1.0, -4.0]);
    /// ```
    pub fn masked(&self, name: &str) -> Result<MaskedView<'_>> {
        Ok(self.entry(name)?.view())
    }
    /// The data handle of `name` (the caller's own handle for parameters and embeddings).
    ///
    /// ```
    /// use data_sparsifier::{DType, DataNormConfig, DataNormSparsifier, Embedding, Tensor};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// let emb = Embedding::from_weight(Tensor::zeros(DType::F32, [4, 2])).unwrap();
    /// sp.add_data("emb", &emb).unwrap();
    /// let handle = sp.data_handle("emb").unwrap();
    /// assert!(handle.as_parameter().unwrap().ptr_eq(emb.weight()));
    /// assert_eq!(handle.shape(), vec![4, 2]);
    /// ```
    pub fn data_handle(&self, name: &str) -> Result<&Handle> {
        Ok(&self.entry(name)?.data)
    }

    /// Squashes the masks of `names` (all, in insertion order, if `None`).
    ///
    /// With `leave_parametrized` (PyTorch's default), `mask · data` is written **in place** into the
    /// shared storage, so every holder of a parameter or embedding sees the sparsified values; the
    /// original is gone afterwards. Without it the mask is detached and the data left untouched.
    /// Either way the entry is no longer parametrized: masked reads return the data as it is, and
    /// the mask stays readable.
    ///
    /// Every name is checked before anything is written: an unknown, repeated or already squashed
    /// name, or a mask that no longer fits its data, is an error that changes nothing (PyTorch
    /// squashes the names before the bad one). Only a failing write into another framework's
    /// storage ([`ExternalTensor`](crate::ExternalTensor)) can stop a squash part-way; the names
    /// before it are then squashed.
    ///
    /// ```
    /// use data_sparsifier::{SquashOptions, DataNormConfig, DataNormSparsifier, Parameter, Tensor, Version};
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig {
    ///     sparse_block_shape: (1, 1),
    ///     ..Default::default()
    /// })
    /// .unwrap();
    /// let w = Parameter::new(Tensor::from_vec(vec![1.0f32, -4.0, 0.5, 3.0], [2, 2]).unwrap());
    /// sp.add_data("w", &w).unwrap();
    /// sp.step().unwrap();
    /// sp.squash_mask(Some(&["w"]), SquashOptions::default()).unwrap();
    /// assert_eq!(w.read().as_slice::<f32>().unwrap(), &[0.0, -4.0, 0.0, 3.0]); // the caller's handle
    /// assert!(sp.get_data("w", Version::Original).is_err());
    /// assert!(sp.squash_mask(None, SquashOptions::default()).is_err()); // already squashed
    /// ```
    pub fn squash_mask(&mut self, names: Option<&[&str]>, options: SquashOptions) -> Result<()> {
        let SquashOptions { leave_parametrized } = options;
        let idx: Vec<usize> = match names {
            None => (0..self.entries.len()).collect(),
            Some(ns) => ns
                .iter()
                .map(|n| self.position(n).ok_or_else(|| self.unknown(n)))
                .collect::<Result<_>>()?,
        };
        let mut seen = vec![false; self.entries.len()];
        for &i in &idx {
            let e = &self.entries[i];
            if std::mem::replace(&mut seen[i], true) {
                return Err(Error::DuplicateName {
                    name: e.name.clone(),
                    context: "squash_mask names",
                });
            }
            if !e.parametrized {
                return Err(Error::Squashed {
                    name: e.name.clone(),
                });
            }
            if leave_parametrized {
                e.check_mask_fits()?;
            }
        }
        for i in idx {
            let e = &mut self.entries[i];
            if leave_parametrized {
                e.data
                    .apply_mask(&e.mask)
                    .map_err(|err| err.with_data(&e.name))?;
            }
            e.parametrized = false;
        }
        Ok(())
    }

    pub(crate) fn entries(&self) -> &[Entry<U>] {
        &self.entries
    }
    pub(crate) fn entries_mut(&mut self) -> &mut Vec<Entry<U>> {
        &mut self.entries
    }
}

impl<U: UpdateMask> fmt::Display for DataSparsifier<U> {
    /// PyTorch's `__repr__` layout: one block per data group, config keys sorted.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (", self.updater.name())?;
        for e in &self.entries {
            write!(f, "\n\tData Group\n\t    name: {}", e.name)?;
            write!(f, "\n\t    kind: {}", e.kind)?;
            if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(&e.config) {
                let mut keys: Vec<_> = map.iter().collect();
                keys.sort_by(|a, b| a.0.cmp(b.0));
                for (k, v) in keys {
                    write!(f, "\n\t    {k}: {v}")?;
                }
            }
            write!(
                f,
                "\n\t    shape: {:?}, density: {:.4}{}",
                e.mask.shape(),
                e.mask.density(),
                if e.parametrized { "" } else { " (squashed)" }
            )?;
        }
        write!(f, "\n)")
    }
}

impl<U: UpdateMask> fmt::Debug for DataSparsifier<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
