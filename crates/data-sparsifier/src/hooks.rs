//! Training hooks for any training loop: PyTorch's Lightning callbacks `PostTrainingDataSparsity`
//! and `TrainingAwareDataSparsity`, without Lightning.
//!
//! A loop calls the [`TrainingHooks`] methods at the usual points (fit start, train start, epoch
//! start, epoch end, train end, fit end); [`fit`] is a minimal loop that does so. The model is
//! anything implementing [`Model`]: named parameters (shared handles) and a deep copy.
//! [`ParameterModel`] is a ready one over this crate's [`Parameter`]s; the `candle` feature
//! implements [`Model`] for `candle_nn::VarMap`.
//!
//! * [`PostTrainingDataSparsity`]: at fit end, deep-copies the model, attaches every parameter of the
//!   copy to a new sparsifier, steps and squashes. The trained model is untouched; the sparsified
//!   copy is [`sparsified`](PostTrainingDataSparsity::sparsified).
//! * [`TrainingAwareDataSparsity`]: at train start builds the sparsifier (on a copy) and the
//!   scheduler; at each epoch end re-attaches a fresh copy of the model (keeping masks and the
//!   scheduled configs), steps the sparsifier, then the scheduler, and snapshots the sparsifier's
//!   state, which the next epoch start reloads; at train end squashes into the last copy.
//!   [`save_state`](TrainingAwareDataSparsity::save_state) /
//!   [`load_state`](TrainingAwareDataSparsity::load_state) checkpoint it, scheduler included, so a
//!   resumed run continues exactly.
//!
//! Names: a parameter `linears.0.weight` is attached as `linears_0_weight` ([`valid_name`]).
//!
//! **Sparsity levels** (PyTorch's `_log_sparsified_level`, which logs `1 − mean(mask)` per
//! parameter): a library does not log, so each hook records the levels — `(name, 1 − density)`
//! of every mask, see [`sparsity_levels`] — where PyTorch would log them and returns them from
//! `sparsity_levels()`; [`with_level_report`](PostTrainingDataSparsity::with_level_report) also
//! hands them to a closure of yours at that moment (to log them with whatever you use, e.g.
//! inside [`fit`]):
//!
//! ```
//! use data_sparsifier::hooks::{ParameterModel, PostTrainingDataSparsity, TrainingHooks};
//! use data_sparsifier::norm::{DataNormConfig, DataNormSparsifier};
//! use data_sparsifier::{DType, Parameter};
//! let mut model = ParameterModel::new();
//! model.push("fc.weight", Parameter::new(data_sparsifier::random::randn([4, 8], DType::F32, 1)));
//! let mut cb = PostTrainingDataSparsity::new(|| DataNormSparsifier::data_norm(DataNormConfig::default()))
//!     .with_level_report(|levels| {
//!         for (name, level) in levels {
//!             println!("{name}: {:.1}% sparse", 100.0 * level);
//!         }
//!     });
//! cb.on_fit_end(&model).unwrap();
//! assert_eq!(cb.sparsity_levels(), Some(&[("fc_weight".to_string(), 0.5)][..]));
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use crate::data::Data;
use crate::error::{Error, Result};
use crate::scheduler::{self, DataScheduler, Schedule};
use crate::sparsifier::{
    AddOptions, Config, DataSparsifier, LoadOptions, SquashOptions, UpdateMask,
};
use crate::state::SparsifierState;
use crate::tensor::Parameter;

/// A model as the hooks see it: named parameters, shared with the model (not copies), and a deep
/// copy.
pub trait Model {
    /// `(name, data)` for every parameter, in a stable order. The data must share the model's
    /// storage (a [`Parameter`] handle, or external storage), so a squash is seen by the model.
    fn named_parameters(&self) -> Result<Vec<(String, Data)>>;
    /// A copy with its own storage (PyTorch's `deepcopy`).
    fn deep_copy(&self) -> Result<Self>
    where
        Self: Sized;
}

/// The sparsifier name of a parameter: `.` replaced by `_` (PyTorch's `_get_valid_name`).
///
/// ```
/// assert_eq!(data_sparsifier::hooks::valid_name("linears.0.weight"), "linears_0_weight");
/// ```
pub fn valid_name(name: &str) -> String {
    name.replace('.', "_")
}

/// Adds every parameter of `model` to `sparsifier` under its [`valid_name`], with that name's patch
/// from `patches` if any. Existing names are replaced, reusing their mask and config (PyTorch's
/// `_attach_model_to_data_sparsifier`).
pub fn attach_model<U: UpdateMask, M: Model + ?Sized>(
    model: &M,
    sparsifier: &mut DataSparsifier<U>,
    patches: Option<&BTreeMap<String, <U::Config as Config>::Patch>>,
) -> Result<()> {
    let none = Default::default();
    for (name, data) in model.named_parameters()? {
        let name = valid_name(&name);
        let patch = patches.and_then(|p| p.get(&name)).unwrap_or(&none);
        sparsifier.add_data_with(&name, data, AddOptions::patched(patch.clone()))?;
    }
    Ok(())
}

/// `(name, 1 − density)` of every mask, in the sparsifier's order (what PyTorch's
/// `_log_sparsified_level` logs).
pub fn sparsity_levels<U: UpdateMask>(sparsifier: &DataSparsifier<U>) -> Vec<(String, f64)> {
    sparsifier
        .names()
        .filter_map(|n| Some((n.to_string(), sparsifier.get_mask(n).ok()?.sparsity())))
        .collect()
}

/// A model made of named [`Parameter`]s (e.g. the weights of a hand-written network).
///
/// ```
/// use data_sparsifier::hooks::{Model, ParameterModel};
/// use data_sparsifier::{Parameter, Tensor};
/// let mut m = ParameterModel::new();
/// m.push("fc.weight", Parameter::new(Tensor::from_vec(vec![1.0f32, 2.0], [1, 2]).unwrap()));
/// let copy = m.deep_copy().unwrap();
/// copy.get("fc.weight").unwrap().write().as_slice_mut::<f32>().unwrap()[0] = 9.0;
/// assert_eq!(m.get("fc.weight").unwrap().read().as_slice::<f32>().unwrap()[0], 1.0);
/// ```
#[derive(Debug, Clone, Default)]
pub struct ParameterModel {
    params: Vec<(String, Parameter)>,
}

impl ParameterModel {
    /// An empty model.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a parameter (its handle is shared, not copied).
    pub fn push(&mut self, name: impl Into<String>, p: Parameter) {
        self.params.push((name.into(), p));
    }
    /// The parameter called `name`.
    pub fn get(&self, name: &str) -> Option<&Parameter> {
        self.params.iter().find(|(n, _)| n == name).map(|(_, p)| p)
    }
    /// The parameters, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Parameter)> {
        self.params.iter().map(|(n, p)| (n.as_str(), p))
    }
}

impl Model for ParameterModel {
    fn named_parameters(&self) -> Result<Vec<(String, Data)>> {
        Ok(self
            .params
            .iter()
            .map(|(n, p)| (n.clone(), Data::Parameter(p.clone())))
            .collect())
    }
    fn deep_copy(&self) -> Result<Self> {
        Ok(ParameterModel {
            params: self
                .params
                .iter()
                .map(|(n, p)| {
                    (
                        n.clone(),
                        Parameter::new(p.snapshot()).with_requires_grad(p.requires_grad()),
                    )
                })
                .collect(),
        })
    }
}

/// The points of a training run where a loop calls its hooks (Lightning's names). Every method
/// defaults to doing nothing.
pub trait TrainingHooks<M> {
    /// Before anything (Lightning's `on_fit_start`).
    fn on_fit_start(&mut self, model: &M) -> Result<()> {
        let _ = model;
        Ok(())
    }
    /// Training starts.
    fn on_train_start(&mut self, model: &M) -> Result<()> {
        let _ = model;
        Ok(())
    }
    /// An epoch starts.
    fn on_train_epoch_start(&mut self, model: &M) -> Result<()> {
        let _ = model;
        Ok(())
    }
    /// An epoch ended (its optimizer steps are done).
    fn on_train_epoch_end(&mut self, model: &M) -> Result<()> {
        let _ = model;
        Ok(())
    }
    /// Training ended.
    fn on_train_end(&mut self, model: &M) -> Result<()> {
        let _ = model;
        Ok(())
    }
    /// After everything (Lightning's `on_fit_end`).
    fn on_fit_end(&mut self, model: &M) -> Result<()> {
        let _ = model;
        Ok(())
    }
}

/// A minimal training loop: calls the hooks in Lightning's order around `epochs` calls of
/// `train_epoch(epoch, model)`.
///
/// ```
/// use data_sparsifier::hooks::{fit, ParameterModel, TrainingHooks};
/// struct Count(Vec<&'static str>);
/// impl TrainingHooks<ParameterModel> for Count {
///     fn on_train_epoch_end(&mut self, _: &ParameterModel) -> data_sparsifier::Result<()> {
///         self.0.push("epoch end");
///         Ok(())
///     }
/// }
/// let mut m = ParameterModel::new();
/// let mut c = Count(vec![]);
/// fit(&mut m, &mut [&mut c], 2, |_, _| Ok(())).unwrap();
/// assert_eq!(c.0.len(), 2);
/// ```
pub fn fit<M>(
    model: &mut M,
    hooks: &mut [&mut dyn TrainingHooks<M>],
    epochs: usize,
    mut train_epoch: impl FnMut(usize, &mut M) -> Result<()>,
) -> Result<()> {
    for h in hooks.iter_mut() {
        h.on_fit_start(model)?;
    }
    for h in hooks.iter_mut() {
        h.on_train_start(model)?;
    }
    for epoch in 0..epochs {
        for h in hooks.iter_mut() {
            h.on_train_epoch_start(model)?;
        }
        train_epoch(epoch, model)?;
        for h in hooks.iter_mut() {
            h.on_train_epoch_end(model)?;
        }
    }
    for h in hooks.iter_mut() {
        h.on_train_end(model)?;
    }
    for h in hooks.iter_mut() {
        h.on_fit_end(model)?;
    }
    Ok(())
}

/// Builds a sparsifier (PyTorch passes a class and its keyword arguments).
pub type SparsifierFactory<U> = Box<dyn Fn() -> Result<DataSparsifier<U>>>;
/// Builds a scheduler on a sparsifier.
pub type SchedulerFactory<U, S> =
    Box<dyn Fn(&mut DataSparsifier<U>) -> Result<DataScheduler<<U as UpdateMask>::Config, S>>>;
/// Receives the `(name, sparsity level)` of every mask when a hook records them (see the
/// [module documentation](self)).
pub type LevelReport = Box<dyn FnMut(&[(String, f64)])>;

/// Records the levels of `sp`'s masks and hands them to the report closure, if any.
fn record_levels<U: UpdateMask>(
    sp: &DataSparsifier<U>,
    report: &mut Option<LevelReport>,
) -> Vec<(String, f64)> {
    let levels = sparsity_levels(sp);
    if let Some(f) = report {
        f(&levels);
    }
    levels
}

/// Sparsifies a copy of the model once training is over (PyTorch's `PostTrainingDataSparsity`).
///
/// At [`on_fit_end`](TrainingHooks::on_fit_end): deep-copy the model, build the sparsifier, attach
/// every parameter of the copy, `step`, `squash_mask`, and record the sparsity levels (where
/// PyTorch logs them). The original model is untouched.
pub struct PostTrainingDataSparsity<U: UpdateMask, M> {
    make_sparsifier: SparsifierFactory<U>,
    data_sparsifier: Option<DataSparsifier<U>>,
    sparsified: Option<M>,
    levels: Option<Vec<(String, f64)>>,
    report: Option<LevelReport>,
}

impl<U: UpdateMask, M: Model> PostTrainingDataSparsity<U, M> {
    /// A hook that builds its sparsifier with `make_sparsifier`.
    pub fn new(make_sparsifier: impl Fn() -> Result<DataSparsifier<U>> + 'static) -> Self {
        PostTrainingDataSparsity {
            make_sparsifier: Box::new(make_sparsifier),
            data_sparsifier: None,
            sparsified: None,
            levels: None,
            report: None,
        }
    }
    /// Also hands the sparsity levels to `report` when they are recorded (at fit end), e.g. to log
    /// them.
    pub fn with_level_report(mut self, report: impl FnMut(&[(String, f64)]) + 'static) -> Self {
        self.report = Some(Box::new(report));
        self
    }
    /// `(name, 1 − density)` of every mask, recorded at fit end (PyTorch logs them there).
    pub fn sparsity_levels(&self) -> Option<&[(String, f64)]> {
        self.levels.as_deref()
    }
    /// The sparsifier, after fit end.
    pub fn data_sparsifier(&self) -> Option<&DataSparsifier<U>> {
        self.data_sparsifier.as_ref()
    }
    /// The sparsified copy, after fit end.
    pub fn sparsified(&self) -> Option<&M> {
        self.sparsified.as_ref()
    }
    /// Takes the sparsified copy out.
    pub fn take_sparsified(&mut self) -> Option<M> {
        self.sparsified.take()
    }
}

impl<U: UpdateMask, M: Model> TrainingHooks<M> for PostTrainingDataSparsity<U, M> {
    fn on_fit_end(&mut self, model: &M) -> Result<()> {
        let copy = model.deep_copy()?;
        let mut sp = (self.make_sparsifier)()?;
        attach_model(&copy, &mut sp, None)?;
        sp.step()?;
        sp.squash_mask(None, SquashOptions::default())?;
        self.levels = Some(record_levels(&sp, &mut self.report));
        self.data_sparsifier = Some(sp);
        self.sparsified = Some(copy);
        Ok(())
    }
}

/// Sparsifies while training, to a schedule (PyTorch's `TrainingAwareDataSparsity`).
///
/// The model being trained is never masked: each epoch end works on a fresh deep copy, and the
/// masks follow the trained weights and the scheduled level. See the [module documentation](self).
pub struct TrainingAwareDataSparsity<U: UpdateMask, S, M> {
    make_sparsifier: SparsifierFactory<U>,
    make_scheduler: SchedulerFactory<U, S>,
    data_sparsifier: Option<DataSparsifier<U>>,
    data_scheduler: Option<DataScheduler<U::Config, S>>,
    sparsified: Option<M>,
    data_sparsifier_state: Option<SparsifierState<U>>,
    levels: Option<Vec<(String, f64)>>,
    report: Option<LevelReport>,
}

impl<U: UpdateMask, S: Schedule, M: Model> TrainingAwareDataSparsity<U, S, M> {
    /// A hook building its sparsifier and its scheduler with these factories.
    pub fn new(
        make_sparsifier: impl Fn() -> Result<DataSparsifier<U>> + 'static,
        make_scheduler: impl Fn(&mut DataSparsifier<U>) -> Result<DataScheduler<U::Config, S>> + 'static,
    ) -> Self {
        TrainingAwareDataSparsity {
            make_sparsifier: Box::new(make_sparsifier),
            make_scheduler: Box::new(make_scheduler),
            data_sparsifier: None,
            data_scheduler: None,
            sparsified: None,
            data_sparsifier_state: None,
            levels: None,
            report: None,
        }
    }
    /// Also hands the sparsity levels to `report` each time they are recorded (every epoch end),
    /// e.g. to log them.
    pub fn with_level_report(mut self, report: impl FnMut(&[(String, f64)]) + 'static) -> Self {
        self.report = Some(Box::new(report));
        self
    }
    /// `(name, 1 − density)` of every mask, recorded at each epoch end after the sparsifier's step:
    /// the levels of the masks that the next epoch end, or the squash at train end, uses. `None`
    /// before the first epoch end of a run.
    pub fn sparsity_levels(&self) -> Option<&[(String, f64)]> {
        self.levels.as_deref()
    }
    /// The sparsifier, from train start on.
    pub fn data_sparsifier(&self) -> Option<&DataSparsifier<U>> {
        self.data_sparsifier.as_ref()
    }
    /// The scheduler, from train start on.
    pub fn data_scheduler(&self) -> Option<&DataScheduler<U::Config, S>> {
        self.data_scheduler.as_ref()
    }
    /// The latest sparsified copy (squashed after train end).
    pub fn sparsified(&self) -> Option<&M> {
        self.sparsified.as_ref()
    }
    /// Takes the sparsified copy out.
    pub fn take_sparsified(&mut self) -> Option<M> {
        self.sparsified.take()
    }
    /// The sparsifier state saved at the last epoch end (PyTorch's `data_sparsifier_state_dict`).
    pub fn saved_state(&self) -> Option<&SparsifierState<U>> {
        self.data_sparsifier_state.as_ref()
    }

    fn not_started() -> Error {
        Error::invalid_state(
            "TrainingAwareDataSparsity: on_train_start has not run (it builds the sparsifier and scheduler)",
        )
    }

    /// Checkpoints the hook: the state saved at the last epoch end (or the current one before any
    /// epoch ended) and the scheduler's, in one state file.
    pub fn save_state(&self, path: impl AsRef<Path>) -> Result<()> {
        let (sp, sched) = match (&self.data_sparsifier, &self.data_scheduler) {
            (Some(sp), Some(s)) => (sp, s),
            _ => return Err(Self::not_started()),
        };
        let mut sd = match &self.data_sparsifier_state {
            Some(sd) => sd.clone(),
            None => sp.state_dict()?,
        };
        sched.save_into(&mut sd.extra)?;
        sd.save(path)
    }

    /// Restores a checkpoint written by [`save_state`](Self::save_state). Call it after
    /// [`on_train_start`](TrainingHooks::on_train_start) (which builds the sparsifier and scheduler
    /// for the model) and before the first epoch of the resumed run. A failed load changes nothing.
    pub fn load_state(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let (sp, sched) = match (&mut self.data_sparsifier, &mut self.data_scheduler) {
            (Some(sp), Some(s)) => (sp, s),
            _ => return Err(Self::not_started()),
        };
        let mut sd = SparsifierState::<U>::load(path)?;
        let state = scheduler::parse_state(&sd.extra)?;
        sd.extra.clear();
        sched.load_both(sp, sd.clone(), state, LoadOptions::default())?;
        self.data_sparsifier_state = Some(sd);
        Ok(())
    }
}

impl<U: UpdateMask, S: Schedule, M: Model> TrainingHooks<M> for TrainingAwareDataSparsity<U, S, M> {
    /// Builds the sparsifier, attaches a copy of the model (so the scheduler gets its base values),
    /// and builds the scheduler (which steps once).
    fn on_train_start(&mut self, model: &M) -> Result<()> {
        let mut sp = (self.make_sparsifier)()?;
        let copy = model.deep_copy()?;
        attach_model(&copy, &mut sp, None)?;
        let sched = (self.make_scheduler)(&mut sp)?;
        self.data_sparsifier = Some(sp);
        self.data_scheduler = Some(sched);
        self.sparsified = Some(copy);
        self.data_sparsifier_state = None;
        self.levels = None;
        Ok(())
    }

    /// Reloads the state saved at the previous epoch end (strict), if any.
    fn on_train_epoch_start(&mut self, _model: &M) -> Result<()> {
        let sp = self
            .data_sparsifier
            .as_mut()
            .ok_or_else(Self::not_started)?;
        if let Some(sd) = &self.data_sparsifier_state {
            sp.load_state_dict(sd.clone(), LoadOptions::default())?;
        }
        Ok(())
    }

    /// Re-attaches a fresh copy of the model (masks and scheduled configs kept), steps the
    /// sparsifier, then the scheduler, saves the sparsifier's state and records the sparsity
    /// levels.
    fn on_train_epoch_end(&mut self, model: &M) -> Result<()> {
        let (sp, sched) = match (&mut self.data_sparsifier, &mut self.data_scheduler) {
            (Some(sp), Some(s)) => (sp, s),
            _ => return Err(Self::not_started()),
        };
        let copy = model.deep_copy()?;
        attach_model(&copy, sp, None)?;
        sp.step()?;
        // The sparsifier stepped just above, so the ordering warning cannot fire.
        let _ = sched.step(sp)?;
        self.data_sparsifier_state = Some(sp.state_dict()?);
        self.levels = Some(record_levels(sp, &mut self.report));
        self.sparsified = Some(copy);
        Ok(())
    }

    /// Squashes the masks into the last sparsified copy.
    fn on_train_end(&mut self, _model: &M) -> Result<()> {
        let sp = self
            .data_sparsifier
            .as_mut()
            .ok_or_else(Self::not_started)?;
        sp.squash_mask(None, SquashOptions::default())
    }
}
