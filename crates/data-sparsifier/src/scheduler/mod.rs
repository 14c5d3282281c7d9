//! The data scheduler: raises (or lowers) one config field of every entry to a schedule while a
//! model trains. PyTorch's `BaseDataScheduler`, redesigned.
//!
//! # Semantics (PyTorch's)
//!
//! * [`DataScheduler::new`] reads each entry's current value of the field as its **base value**,
//!   then makes one step itself, so afterwards [`last_epoch`](DataScheduler::last_epoch) is 0 and
//!   [`step_count`](DataScheduler::step_count) 1.
//! * **Data added later is not scheduled** (PyTorch's schedulers usually schedule it from the next
//!   epoch): it has no base value, which the base-relative schedules need. Add all data before
//!   building the scheduler.
//! * [`DataScheduler::step`] advances `last_epoch`, asks the [`Schedule`] for each entry's new value,
//!   writes the values into the sparsifier's configs and re-enables mask updates. Masks change on the
//!   **next** [`DataSparsifier::step`].
//! * The usage contract: step the sparsifier (e.g. per batch), then the scheduler (e.g. per epoch).
//!
//! # What is different
//!
//! * **The field is typed.** A [`Param`] is an accessor pair (plus the field's valid range), not a
//!   string: `DataNormConfig::SPARSITY_LEVEL`, or `Param::<MyConfig>::new("threshold", |c| c.t, |c, v| c.t = v)`
//!   for a config of your own. A misspelled field is a compile error.
//! * **Values are clamped to the parameter's range** (`[0, 1]` for a sparsity level). PyTorch lets a
//!   schedule grow a level past 1 (its callback test reaches 16, which prunes everything, as 1 does);
//!   here a schedule that overshoots stays at the bound. A NaN or an infinity is an error and
//!   changes nothing (JSON, the saved state's format, cannot hold either).
//! * **The scheduler does not hold the sparsifier.** It is passed to `new` and `step`
//!   (`scheduler.step(&mut sparsifier)`), so both stay freely usable in a training loop, and the
//!   sparsifier's `step` is not wrapped: the sparsifier counts its own steps
//!   ([`DataSparsifier::step_count`]).
//! * **The ordering warning is a value, not a log line.** [`DataScheduler::step`] returns a
//!   `#[must_use]` [`StepOutcome`]; its [`warning`](StepOutcome::warning) is
//!   [`SchedulerWarning::SteppedBeforeSparsifier`] when the first user step of the scheduler comes
//!   before any sparsifier step since the scheduler was built (PyTorch's `UserWarning`). Ignoring it
//!   needs an explicit `let _ =`; a library has no business printing.
//! * **State saves with the sparsifier's**, in the same file under `extra["scheduler"]`
//!   ([`save_state`](DataScheduler::save_state) / [`load_state`](DataScheduler::load_state)), so a
//!   resumed run continues exactly.
//!
//! ```
//! use data_sparsifier::scheduler::{DataScheduler, Param, StepSchedule};
//! # use data_sparsifier::{Config, DataSparsifier, Mask, Tensor, TensorView, UpdateMask};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
//! # struct Level { level: f64 }
//! # #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
//! # struct LevelPatch { level: Option<f64> }
//! # impl Config for Level {
//! #     type Patch = LevelPatch;
//! #     fn apply(&mut self, p: &LevelPatch) { if let Some(l) = p.level { self.level = l; } }
//! # }
//! # struct Keep;
//! # impl UpdateMask for Keep {
//! #     type Config = Level; type State = ();
//! #     fn update_mask(&self, _: &str, _: TensorView<'_>, _: &Level, _: &mut (), _: &mut Mask)
//! #         -> data_sparsifier::Result<()> { Ok(()) }
//! # }
//! const LEVEL: Param<Level> = Param::<Level>::new("level", |c| c.level, |c, v| c.level = v).with_range(0.0, 1.0);
//!
//! let mut sp = DataSparsifier::new(Keep, Level { level: 0.3 }).unwrap();
//! sp.add_data("w", Tensor::zeros(data_sparsifier::DType::F32, [4, 4])).unwrap();
//! let mut sched = DataScheduler::new(&mut sp, LEVEL, StepSchedule::new(1, 2.0).unwrap()).unwrap();
//!
//! // Stepping the scheduler before the sparsifier is reported, not printed:
//! // let w = sched.step(&mut sp).unwrap().warning(); // Some(SteppedBeforeSparsifier)
//! for _epoch in 0..3 {
//!     sp.step().unwrap(); // e.g. once per batch
//!     assert!(sched.step(&mut sp).unwrap().warning().is_none());
//! }
//! // 0.3 -> 0.6 -> 1.2 (clamped to 1) -> 1
//! assert_eq!(sp.config("w").unwrap().level, 1.0);
//! assert_eq!(sched.last_epoch(), 3);
//! ```

mod schedules;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::norm::DataNormConfig;
use crate::sparsifier::{Config, DataSparsifier, LoadOptions, UpdateMask};
use crate::state::SparsifierState;

pub use schedules::{Lambda, LinearSchedule, Point, Schedule, StepSchedule, ZhuGupta};

/// The key of the scheduler's state in [`StateDict::extra`](crate::StateDict::extra).
pub const STATE_KEY: &str = "scheduler";

/// A typed name for one `f64` field of a config: an accessor pair and the field's valid range.
///
/// ```
/// use data_sparsifier::scheduler::Param;
/// #[derive(Debug)]
/// struct Cfg { threshold: f64 }
/// const THRESHOLD: Param<Cfg> =
///     Param::<Cfg>::new("threshold", |c| c.threshold, |c, v| c.threshold = v).with_range(0.0, f64::INFINITY);
/// let mut c = Cfg { threshold: 0.1 };
/// THRESHOLD.set(&mut c, 0.4);
/// assert_eq!(THRESHOLD.get(&c), 0.4);
/// assert_eq!(THRESHOLD.clamp(-3.0), 0.0);
/// ```
pub struct Param<C> {
    name: &'static str,
    get: fn(&C) -> f64,
    set: fn(&mut C, f64),
    min: f64,
    max: f64,
}

impl<C> Param<C> {
    /// A parameter named `name` (used in messages and saved state), read by `get` and written by
    /// `set`; its range is unbounded until [`with_range`](Self::with_range).
    pub const fn new(name: &'static str, get: fn(&C) -> f64, set: fn(&mut C, f64)) -> Self {
        Param {
            name,
            get,
            set,
            min: f64::NEG_INFINITY,
            max: f64::INFINITY,
        }
    }
    /// The valid range `[min, max]`: scheduled values are clamped into it.
    pub const fn with_range(mut self, min: f64, max: f64) -> Self {
        self.min = min;
        self.max = max;
        self
    }
    /// The field's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// The valid range.
    pub fn range(&self) -> (f64, f64) {
        (self.min, self.max)
    }
    /// Reads the field.
    pub fn get(&self, config: &C) -> f64 {
        (self.get)(config)
    }
    /// Writes the field.
    pub fn set(&self, config: &mut C, value: f64) {
        (self.set)(config, value)
    }
    /// Clamps a value into the range.
    pub fn clamp(&self, value: f64) -> f64 {
        value.max(self.min).min(self.max)
    }
}

impl<C> Clone for Param<C> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<C> Copy for Param<C> {}
impl<C> fmt::Debug for Param<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Param({:?} in [{}, {}])", self.name, self.min, self.max)
    }
}

impl DataNormConfig {
    /// The scheduled `sparsity_level` of a [`DataNormConfig`], range `[0, 1]`.
    ///
    /// ```
    /// use data_sparsifier::norm::{DataNormConfig, DataNormSparsifier};
    /// use data_sparsifier::scheduler::{DataScheduler, ZhuGupta};
    /// use data_sparsifier::Tensor;
    /// let mut sp = DataNormSparsifier::data_norm(DataNormConfig::default()).unwrap();
    /// sp.add_data("w", Tensor::zeros(data_sparsifier::DType::F32, [8, 8])).unwrap();
    /// let schedule = ZhuGupta::new(Some(0.0), 0.9, 0, 10, 1).unwrap();
    /// let sched = DataScheduler::new(&mut sp, DataNormConfig::SPARSITY_LEVEL, schedule).unwrap();
    /// assert_eq!(sp.config("w").unwrap().sparsity_level, 0.0);
    /// assert_eq!(sched.base_value("w"), Some(0.5));
    /// ```
    pub const SPARSITY_LEVEL: Param<DataNormConfig> = Param::<DataNormConfig>::new(
        "sparsity_level",
        |c| c.sparsity_level,
        |c, v| c.sparsity_level = v,
    )
    .with_range(0.0, 1.0);
}

/// A warning a scheduler step can report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SchedulerWarning {
    /// The scheduler's first step came before any sparsifier step since the scheduler was built.
    SteppedBeforeSparsifier,
}

impl fmt::Display for SchedulerWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SchedulerWarning::SteppedBeforeSparsifier => f.write_str(
                "Detected call of `scheduler.step()` before `data_sparsifier.step()`. You have to make \
                 sure you run the data_sparsifier.step() BEFORE any calls to the scheduler.step().",
            ),
        }
    }
}

/// What a scheduler step did: it always stepped; it may carry a warning.
#[must_use = "a scheduler step reports a misordered call (scheduler before sparsifier) in its outcome; check `.warning()` or discard it with `let _ =`"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// Stepped, nothing to report.
    Stepped,
    /// Stepped, with a warning.
    Warned(SchedulerWarning),
}

impl StepOutcome {
    /// The warning, if any.
    pub fn warning(self) -> Option<SchedulerWarning> {
        match self {
            StepOutcome::Stepped => None,
            StepOutcome::Warned(w) => Some(w),
        }
    }
}

/// The scheduler's saved state (PyTorch's `state_dict()` minus the sparsifier): what is needed to
/// continue a run exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerState {
    /// The scheduled field's name.
    pub param: String,
    /// The schedule's name ([`Schedule::name`]).
    pub schedule: String,
    /// The base value of each scheduled entry, in order.
    pub base: Vec<(String, f64)>,
    /// Each entry's value after the last step (PyTorch's `_last_param`).
    pub last: Vec<(String, f64)>,
    /// The last epoch entered (0 after construction).
    pub last_epoch: i64,
    /// Steps taken, the construction step included.
    pub step_count: u64,
    /// The schedule's hyper-parameters ([`Schedule::state`]).
    pub schedule_state: serde_json::Value,
}

/// Drives one config field of every entry of a [`DataSparsifier`] with a [`Schedule`]. See the
/// [module documentation](self).
pub struct DataScheduler<C, S> {
    param: Param<C>,
    schedule: S,
    base: Vec<(String, f64)>,
    last: Vec<(String, f64)>,
    last_epoch: i64,
    step_count: u64,
    sparsifier_steps_at_start: u64,
}

impl<C: Config, S: Schedule> DataScheduler<C, S> {
    /// Builds a scheduler: reads the base values from `sparsifier`, then steps once (epoch 0),
    /// writing the epoch-0 values into the configs.
    ///
    /// Errors: invalid schedule hyper-parameters; a non-finite base value (it could be neither
    /// scheduled nor saved); a non-finite value at epoch 0.
    pub fn new<U>(sparsifier: &mut DataSparsifier<U>, param: Param<C>, schedule: S) -> Result<Self>
    where
        U: UpdateMask<Config = C>,
    {
        schedule.validate()?;
        let base: Vec<(String, f64)> = sparsifier
            .configs()
            .map(|(n, c)| (n.to_string(), param.get(c)))
            .collect();
        check_finite(
            &base,
            param.name,
            "a finite number: the scheduler takes each entry's current value as its base value; \
             give the entry a finite value before building the scheduler",
        )?;
        let mut s = DataScheduler {
            param,
            schedule,
            base,
            last: Vec::new(),
            last_epoch: -1,
            step_count: 0,
            sparsifier_steps_at_start: sparsifier.step_count(),
        };
        // The construction step cannot warn: the check is for the first *user* step.
        let _ = s.step(sparsifier)?;
        Ok(s)
    }

    /// Advances one epoch: writes each scheduled entry's new value (clamped to the parameter's range)
    /// into its config and re-enables mask updates; the masks change at the next sparsifier step.
    ///
    /// Everything is checked and all values are computed first; each of these is an error that
    /// changes nothing:
    /// * invalid hyper-parameters ([`Schedule::validate`]; they may have been changed through
    ///   [`schedule_mut`](Self::schedule_mut) since the scheduler was built);
    /// * a non-finite value (NaN or ±infinity: JSON would save it as `null`, and the state would
    ///   not load);
    /// * a scheduled name no longer in the sparsifier;
    /// * an epoch or step counter at its maximum (only a crafted state gets there).
    pub fn step<U>(&mut self, sparsifier: &mut DataSparsifier<U>) -> Result<StepOutcome>
    where
        U: UpdateMask<Config = C>,
    {
        self.schedule.validate()?;
        let (epoch, step_count) = self.next_counters()?;
        let warning =
            self.step_count == 1 && sparsifier.step_count() <= self.sparsifier_steps_at_start;
        let mut values = Vec::with_capacity(self.base.len());
        for (name, base) in &self.base {
            let current = self.param.get(sparsifier.config(name)?);
            let v = self.schedule.value(&Point {
                name,
                epoch,
                base: *base,
                current,
            });
            if !v.is_finite() {
                return Err(Error::invalid_config(
                    name.as_str(),
                    self.param.name,
                    v,
                    format!(
                        "a finite number; the {} schedule gave {v} at epoch {epoch} and nothing was \
                         changed: make the schedule (or its hyper-parameters) give finite values",
                        self.schedule.name()
                    ),
                ));
            }
            values.push(self.param.clamp(v));
        }
        for ((name, _), v) in self.base.iter().zip(values) {
            self.param.set(sparsifier.config_mut(name)?, v);
        }
        self.step_count = step_count;
        self.last_epoch = epoch as i64; // next_counters checked that it fits
        self.last = sparsifier
            .configs()
            .map(|(n, c)| (n.to_string(), self.param.get(c)))
            .collect();
        sparsifier.set_mask_update_enabled(true);
        Ok(if warning {
            StepOutcome::Warned(SchedulerWarning::SteppedBeforeSparsifier)
        } else {
            StepOutcome::Stepped
        })
    }

    /// The epoch the next step enters and the step count after it, or an error if either counter
    /// would overflow (a loaded state may hold any value).
    fn next_counters(&self) -> Result<(u64, u64)> {
        let epoch = self
            .last_epoch
            .checked_add(1)
            .and_then(|e| u64::try_from(e).ok());
        match (epoch, self.step_count.checked_add(1)) {
            (Some(e), Some(c)) => Ok((e, c)),
            _ => Err(Error::invalid_state(format!(
                "the scheduler cannot step: last_epoch {} or step_count {} is at its maximum; \
                 no run gets there, so the loaded state is corrupt: load a state saved by a real run",
                self.last_epoch, self.step_count
            ))),
        }
    }

    /// The scheduled field.
    pub fn param(&self) -> Param<C> {
        self.param
    }
    /// The schedule.
    pub fn schedule(&self) -> &S {
        &self.schedule
    }
    /// The schedule, mutably (e.g. to change a hyper-parameter mid-run). The next
    /// [`step`](Self::step) validates it and refuses invalid values.
    pub fn schedule_mut(&mut self) -> &mut S {
        &mut self.schedule
    }
    /// The last epoch entered: 0 after construction, +1 per [`step`](Self::step).
    pub fn last_epoch(&self) -> i64 {
        self.last_epoch
    }
    /// Steps taken, the construction step included (PyTorch's `_step_count`).
    pub fn step_count(&self) -> u64 {
        self.step_count
    }
    /// The base values, in order (PyTorch's `base_param`).
    pub fn base_values(&self) -> &[(String, f64)] {
        &self.base
    }
    /// The base value of `name`.
    pub fn base_value(&self, name: &str) -> Option<f64> {
        lookup(&self.base, name)
    }
    /// Every entry's value after the last step (PyTorch's `get_last_param()`).
    pub fn last_values(&self) -> &[(String, f64)] {
        &self.last
    }
    /// The value of `name` after the last step.
    pub fn last_value(&self, name: &str) -> Option<f64> {
        lookup(&self.last, name)
    }

    /// A snapshot of the state.
    pub fn state_dict(&self) -> SchedulerState {
        SchedulerState {
            param: self.param.name.to_string(),
            schedule: self.schedule.name().to_string(),
            base: self.base.clone(),
            last: self.last.clone(),
            last_epoch: self.last_epoch,
            step_count: self.step_count,
            schedule_state: self.schedule.state(),
        }
    }

    fn check_state(&self, state: &SchedulerState) -> Result<()> {
        if state.param != self.param.name || state.schedule != self.schedule.name() {
            return Err(Error::invalid_state(format!(
                "the saved scheduler drives {:?} with the {:?} schedule; this one drives {:?} with {:?}",
                state.param,
                state.schedule,
                self.param.name,
                self.schedule.name()
            )));
        }
        if state.last_epoch < 0 {
            return Err(Error::invalid_state(format!(
                "scheduler last_epoch is {}; a built scheduler is at epoch 0 or later",
                state.last_epoch
            )));
        }
        Ok(())
    }

    /// Loads a state (PyTorch's `load_state_dict`, which restores the hyper-parameters too). The
    /// parameter and schedule names must match; on error nothing changes.
    pub fn load_state_dict(&mut self, state: SchedulerState) -> Result<()> {
        self.check_state(&state)?;
        self.schedule.load_state(&state.schedule_state)?;
        self.base = state.base;
        self.last = state.last;
        self.last_epoch = state.last_epoch;
        self.step_count = state.step_count;
        Ok(())
    }

    /// The state as JSON, for [`StateDict::extra`](crate::StateDict::extra) under [`STATE_KEY`].
    ///
    /// Errors, rather than JSON that would not load back: hyper-parameters the schedule's
    /// [`validate`](Schedule::validate) refuses (e.g. an infinite `gamma` set through
    /// [`schedule_mut`](Self::schedule_mut): JSON would hold `null`); a non-finite base or last
    /// value; a serialization failure.
    pub fn to_json(&self) -> Result<serde_json::Value> {
        self.schedule.validate()?;
        let unsaveable = "a finite number: JSON cannot hold it, so the saved state would not load";
        check_finite(&self.base, self.param.name, unsaveable)?;
        check_finite(&self.last, self.param.name, unsaveable)?;
        serde_json::to_value(self.state_dict())
            .map_err(|e| Error::invalid_state_from("cannot serialize the scheduler state", e))
    }

    /// Puts the state into an `extra` map under [`STATE_KEY`]. On error (see
    /// [`to_json`](Self::to_json)) the map is unchanged.
    pub fn save_into(&self, extra: &mut BTreeMap<String, serde_json::Value>) -> Result<()> {
        extra.insert(STATE_KEY.to_string(), self.to_json()?);
        Ok(())
    }

    /// Reads the state from an `extra` map (an error if it is missing or malformed) and loads it.
    pub fn load_from(&mut self, extra: &BTreeMap<String, serde_json::Value>) -> Result<()> {
        let state = parse_state(extra)?;
        self.load_state_dict(state)
    }

    /// Saves the sparsifier's state with this scheduler's in one file (atomically).
    pub fn save_state<U>(
        &self,
        sparsifier: &DataSparsifier<U>,
        path: impl AsRef<Path>,
    ) -> Result<()>
    where
        U: UpdateMask<Config = C>,
    {
        let mut extra = BTreeMap::new();
        self.save_into(&mut extra)?;
        sparsifier.save_state_with_extra(path, &extra)
    }

    /// Loads a file written by [`save_state`](Self::save_state) into `sparsifier` (strict or not,
    /// see [`DataSparsifier::load_state_dict`]) and this scheduler. Everything is checked first: a
    /// failed load changes neither.
    pub fn load_state<U>(
        &mut self,
        sparsifier: &mut DataSparsifier<U>,
        path: impl AsRef<Path>,
        options: LoadOptions,
    ) -> Result<()>
    where
        U: UpdateMask<Config = C>,
    {
        let mut sd = SparsifierState::<U>::load(path)?;
        let state = parse_state(&sd.extra)?;
        sd.extra.clear();
        self.load_both(sparsifier, sd, state, options)
    }

    /// Loads a sparsifier state and a scheduler state together; a failure changes neither.
    pub(crate) fn load_both<U>(
        &mut self,
        sparsifier: &mut DataSparsifier<U>,
        sd: SparsifierState<U>,
        state: SchedulerState,
        options: LoadOptions,
    ) -> Result<()>
    where
        U: UpdateMask<Config = C>,
    {
        self.check_state(&state)?;
        let previous = self.schedule.state();
        self.schedule.load_state(&state.schedule_state)?;
        if let Err(e) = sparsifier.load_state_dict(sd, options) {
            // Put the schedule back; it loaded from its own state a moment ago, so this succeeds.
            let _ = self.schedule.load_state(&previous);
            return Err(e);
        }
        self.base = state.base;
        self.last = state.last;
        self.last_epoch = state.last_epoch;
        self.step_count = state.step_count;
        Ok(())
    }
}

/// Reads a [`SchedulerState`] from an `extra` map.
pub fn parse_state(extra: &BTreeMap<String, serde_json::Value>) -> Result<SchedulerState> {
    let v = extra.get(STATE_KEY).ok_or_else(|| {
        Error::invalid_state(format!(
            "no {STATE_KEY:?} entry in the saved state's extra part: it was saved without a scheduler"
        ))
    })?;
    serde_json::from_value(v.clone()).map_err(|e| Error::invalid_state_from("scheduler state", e))
}

/// An [`Error::InvalidConfig`] for the first non-finite value.
fn check_finite(values: &[(String, f64)], key: &'static str, expected: &str) -> Result<()> {
    match values.iter().find(|(_, v)| !v.is_finite()) {
        Some((name, v)) => Err(Error::invalid_config(name.as_str(), key, v, expected)),
        None => Ok(()),
    }
}

fn lookup(values: &[(String, f64)], name: &str) -> Option<f64> {
    values.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

impl<C, S: Schedule> fmt::Display for DataScheduler<C, S> {
    /// PyTorch's `__repr__` layout, without the sparsifier (which the scheduler does not hold).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DataScheduler (\n    schedule: {}\n    {}: {{",
            self.schedule.name(),
            self.param.name
        )?;
        for (i, (n, v)) in self.base.iter().enumerate() {
            write!(f, "{}{n:?}: {v}", if i > 0 { ", " } else { "" })?;
        }
        write!(f, "}}\n)")
    }
}

impl<C, S: Schedule> fmt::Debug for DataScheduler<C, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
