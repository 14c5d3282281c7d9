//! The [`Schedule`] trait and the ready-made schedules: [`StepSchedule`], [`Lambda`],
//! [`LinearSchedule`] and [`ZhuGupta`] (cubic gradual pruning).
//!
//! A schedule is a pure rule: given the epoch, an entry's base value (read when the scheduler was
//! built) and its current value, it returns the new value. The scheduler clamps what it returns to
//! the parameter's range (`[0, 1]` for a sparsity level), so no schedule can push a level past 1.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a [`Schedule`] sees for one entry at one scheduler step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point<'a> {
    /// The data name.
    pub name: &'a str,
    /// The epoch being entered: 0 for the step the scheduler makes when it is built, then 1, 2, ...
    /// (PyTorch's `last_epoch` after its increment).
    pub epoch: u64,
    /// The entry's value when the scheduler was built (PyTorch's `base_param[name]`).
    pub base: f64,
    /// The entry's value now, before this step (what a chained schedule multiplies).
    pub current: f64,
}

/// A rule giving a scheduled parameter's next value (PyTorch's `get_schedule_param`, per entry).
///
/// Implement it for a custom schedule; the ported PyTorch test scheduler, which halves every level
/// after the first epoch, is:
///
/// ```
/// use data_sparsifier::scheduler::{Point, Schedule};
/// struct Halve;
/// impl Schedule for Halve {
///     fn name(&self) -> &'static str { "halve" }
///     fn value(&self, at: &Point<'_>) -> f64 {
///         if at.epoch > 0 { at.current * 0.5 } else { at.base }
///     }
/// }
/// let p = Point { name: "w", epoch: 1, base: 0.7, current: 0.7 };
/// assert_eq!(Halve.value(&p), 0.35);
/// ```
pub trait Schedule {
    /// A short name, saved with the state and checked when loading it.
    fn name(&self) -> &'static str;
    /// The new value for one entry. A non-finite value (NaN, ±infinity) is an error; finite values
    /// outside the parameter's range are clamped by the scheduler.
    ///
    /// It must not panic, whatever the hyper-parameters (the ready-made schedules have public
    /// fields, so they can hold values [`validate`](Self::validate) refuses): return NaN when no
    /// value can be computed.
    fn value(&self, at: &Point<'_>) -> f64;
    /// Checks the hyper-parameters; called when the scheduler is built, before each of its steps
    /// (so a change through `DataScheduler::schedule_mut` is checked too) and when state is loaded.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
    /// The schedule's own state (its hyper-parameters), saved with the scheduler's. `Null` for
    /// schedules that cannot be serialized (closures); they must be rebuilt by the caller.
    fn state(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
    /// Restores what [`state`](Self::state) returned (PyTorch's `load_state_dict` restores `gamma`,
    /// `step_size`, ... too). On error `self` must be left unchanged.
    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        let _ = state;
        Ok(())
    }
}

impl<S: Schedule + ?Sized> Schedule for Box<S> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn value(&self, at: &Point<'_>) -> f64 {
        (**self).value(at)
    }
    fn validate(&self) -> Result<()> {
        (**self).validate()
    }
    fn state(&self) -> serde_json::Value {
        (**self).state()
    }
    fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
        (**self).load_state(state)
    }
}

fn bad(key: &'static str, value: impl ToString, expected: impl Into<String>) -> Error {
    Error::invalid_config("schedule", key, value, expected)
}

fn finite(key: &'static str, v: f64) -> Result<()> {
    if v.is_finite() {
        Ok(())
    } else {
        Err(bad(key, v, "a finite number"))
    }
}

/// Serde-backed `state` / `load_state` for the typed schedules: the state is the schedule itself.
macro_rules! serde_state {
    () => {
        fn state(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
        }
        fn load_state(&mut self, state: &serde_json::Value) -> Result<()> {
            let loaded: Self = serde_json::from_value(state.clone()).map_err(|e| {
                Error::invalid_state_from(format!("{} schedule state", self.name()), e)
            })?;
            loaded.validate()?;
            *self = loaded;
            Ok(())
        }
    };
}

/// Multiply the current value by `gamma` every `step_size` epochs: the `StepSLScheduler` of
/// PyTorch's callback tests (and `StepLR`). Chained: it multiplies the *current* value, keeping it
/// at epoch 0 and at epochs not divisible by `step_size`.
///
/// ```
/// use data_sparsifier::scheduler::{Point, Schedule, StepSchedule};
/// let s = StepSchedule::new(2, 0.5).unwrap();
/// let at = |epoch| Point { name: "w", epoch, base: 0.8, current: 0.8 };
/// assert_eq!(s.value(&at(0)), 0.8);
/// assert_eq!(s.value(&at(1)), 0.8);
/// assert_eq!(s.value(&at(2)), 0.4);
/// assert!(StepSchedule::new(0, 2.0).is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSchedule {
    /// Epochs between multiplications (> 0).
    pub step_size: u64,
    /// The factor.
    pub gamma: f64,
}

impl StepSchedule {
    /// A validated step schedule.
    pub fn new(step_size: u64, gamma: f64) -> Result<Self> {
        let s = StepSchedule { step_size, gamma };
        s.validate()?;
        Ok(s)
    }
}

impl Schedule for StepSchedule {
    fn name(&self) -> &'static str {
        "step"
    }
    /// `current · gamma` at the epochs `step_size, 2·step_size, …`, `current` otherwise. An invalid
    /// `step_size` of 0 gives NaN (which [`DataScheduler::step`](super::DataScheduler::step)
    /// refuses), not a division by zero.
    fn value(&self, at: &Point<'_>) -> f64 {
        match at.epoch.checked_rem(self.step_size) {
            None => f64::NAN,
            Some(0) if at.epoch > 0 => at.current * self.gamma,
            Some(_) => at.current,
        }
    }
    fn validate(&self) -> Result<()> {
        if self.step_size == 0 {
            return Err(bad("step_size", 0, "a positive number of epochs"));
        }
        finite("gamma", self.gamma)
    }
    serde_state!();
}

/// `base · f(epoch)`, with `f` a closure (PyTorch's `LambdaLR` pattern). A closure cannot be saved:
/// its state is `Null`, and a resumed run must pass the same closure again (only the epoch counter
/// and values are restored).
///
/// ```
/// use data_sparsifier::scheduler::{Lambda, Point, Schedule};
/// let s = Lambda::new(|epoch| 1.0 - 0.9f64.powi(epoch as i32));
/// let p = Point { name: "w", epoch: 2, base: 0.5, current: 0.0 };
/// assert!((s.value(&p) - 0.5 * 0.19).abs() < 1e-12);
/// ```
pub struct Lambda<F> {
    f: F,
}

impl<F: Fn(u64) -> f64> Lambda<F> {
    /// A schedule giving `base · f(epoch)`.
    pub fn new(f: F) -> Self {
        Lambda { f }
    }
}

impl<F: Fn(u64) -> f64> Schedule for Lambda<F> {
    fn name(&self) -> &'static str {
        "lambda"
    }
    fn value(&self, at: &Point<'_>) -> f64 {
        at.base * (self.f)(at.epoch)
    }
}

impl<F> fmt::Debug for Lambda<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Lambda(<closure>)")
    }
}

/// A straight ramp from `start_value` (each entry's base value if `None`) at `start_epoch` to
/// `end_value` at `start_epoch + num_epochs`, constant before and after.
///
/// ```
/// use data_sparsifier::scheduler::{LinearSchedule, Point, Schedule};
/// let s = LinearSchedule { start_value: None, end_value: 0.9, start_epoch: 1, num_epochs: 4 };
/// let at = |epoch| Point { name: "w", epoch, base: 0.1, current: 0.0 };
/// let v: Vec<f64> = (0..7).map(|e| s.value(&at(e))).collect();
/// let want = [0.1, 0.1, 0.3, 0.5, 0.7, 0.9, 0.9];
/// assert!(v.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearSchedule {
    /// The value at and before `start_epoch`; `None` means each entry's base value.
    pub start_value: Option<f64>,
    /// The value at and after `start_epoch + num_epochs`.
    pub end_value: f64,
    /// The epoch the ramp starts.
    pub start_epoch: u64,
    /// The ramp length in epochs (0: jump to `end_value` at `start_epoch`).
    pub num_epochs: u64,
}

impl Schedule for LinearSchedule {
    fn name(&self) -> &'static str {
        "linear"
    }
    fn value(&self, at: &Point<'_>) -> f64 {
        let from = self.start_value.unwrap_or(at.base);
        if at.epoch < self.start_epoch {
            return from;
        }
        let t = at.epoch - self.start_epoch;
        if t >= self.num_epochs {
            return self.end_value;
        }
        from + (self.end_value - from) * (t as f64 / self.num_epochs as f64)
    }
    fn validate(&self) -> Result<()> {
        if let Some(v) = self.start_value {
            finite("start_value", v)?;
        }
        finite("end_value", self.end_value)
    }
    serde_state!();
}

/// Zhu & Gupta's gradual pruning schedule (M. Zhu, S. Gupta, "To prune, or not to prune:
/// exploring the efficacy of pruning for model compression", 2017, equation 1), the one
/// practitioners use (TensorFlow Model Optimization's `PolynomialDecay` with power 3). PyTorch's
/// data sparsifier has no such schedule; this one is ours.
///
/// `s_t = s_f + (s_i − s_f) · (1 − (t − t₀) / (n·Δt))³` for `t ∈ {t₀, t₀ + Δt, …, t₀ + n·Δt}`
///
/// with `s_i` = `initial` (each entry's base value if `None`), `s_f` = `final_sparsity`,
/// `t₀` = `start_step`, `n` = `pruning_steps` (the number of pruning steps) and
/// `Δt` = `frequency` (the steps between two pruning steps). So:
///
/// * before `t₀` the level is `s_i`;
/// * the level changes only at `t₀ + k·Δt`; in between it keeps the last value: at any step
///   `t ≥ t₀` it is `s_f + (s_i − s_f) · (1 − k/n)³` with `k = ⌊(t − t₀) / Δt⌋`
///   (`s_i` exactly for `k = 0`);
/// * it reaches `s_f` exactly at `t₀ + n·Δt` (the `n`-th pruning step after `t₀`) and stays there
///   (`n = 0` jumps to `s_f` at `t₀`).
///
/// Steps are the scheduler's steps: its construction is step 0, then each
/// [`DataScheduler::step`](super::DataScheduler::step) is the next (epochs, or batches if the
/// scheduler is stepped per batch). Pruning is fast at first and slows as the level nears `s_f`,
/// giving the weights time to recover.
///
/// Worked example: `s_i = 0`, `s_f = 0.8`, `t₀ = 2`, `n = 4`, `Δt = 2`, so the ramp ends at
/// `2 + 4·2 = 10`:
///
/// | step `t` | `k` | level |
/// |---|---|---|
/// | 0, 1 | (before `t₀`) | 0 |
/// | 2, 3 | 0 | 0 |
/// | 4, 5 | 1 | 0.8 · (1 − (3/4)³) = 0.8 · 37/64 = 0.4625 |
/// | 6, 7 | 2 | 0.8 · (1 − (1/2)³) = 0.7 |
/// | 8, 9 | 3 | 0.8 · (1 − (1/4)³) = 0.7875 |
/// | 10, 11, … | 4 = `n` | 0.8 |
///
/// ```
/// use data_sparsifier::scheduler::{Point, Schedule, ZhuGupta};
/// let s = ZhuGupta::new(Some(0.0), 0.8, 2, 4, 2).unwrap();
/// assert_eq!(s.end_step(), Some(10));
/// let at = |epoch| Point { name: "w", epoch, base: 0.5, current: 0.0 };
/// let v: Vec<f64> = (0..12).map(|t| s.value(&at(t))).collect();
/// let want = [0.0, 0.0, 0.0, 0.0, 0.4625, 0.4625, 0.7, 0.7, 0.7875, 0.7875, 0.8, 0.8];
/// assert!(v.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-12), "{v:?}");
/// assert_eq!(v[10], 0.8); // exactly s_f at the end of the ramp
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZhuGupta {
    /// `s_i`; `None` means each entry's base value.
    pub initial: Option<f64>,
    /// `s_f`.
    pub final_sparsity: f64,
    /// `t₀`: the step of the first pruning step (where the level is still `s_i`).
    pub start_step: u64,
    /// `n`: the number of pruning steps after `t₀`; the level reaches `s_f` at `t₀ + n·Δt`.
    pub pruning_steps: u64,
    /// `Δt`: the steps between two pruning steps (> 0).
    pub frequency: u64,
}

impl ZhuGupta {
    /// A validated schedule: `s_i` = `initial` (`None`: each entry's base value),
    /// `s_f` = `final_sparsity`, `t₀` = `start_step`, `n` = `pruning_steps`, `Δt` = `frequency`.
    pub fn new(
        initial: Option<f64>,
        final_sparsity: f64,
        start_step: u64,
        pruning_steps: u64,
        frequency: u64,
    ) -> Result<Self> {
        let s = ZhuGupta {
            initial,
            final_sparsity,
            start_step,
            pruning_steps,
            frequency,
        };
        s.validate()?;
        Ok(s)
    }

    /// `t₀ + n·Δt`, the step from which the level is `s_f`; `None` if it does not fit in a `u64`
    /// (which [`validate`](Schedule::validate) refuses).
    pub fn end_step(&self) -> Option<u64> {
        self.pruning_steps
            .checked_mul(self.frequency)
            .and_then(|ramp| ramp.checked_add(self.start_step))
    }
}

impl Schedule for ZhuGupta {
    fn name(&self) -> &'static str {
        "zhu_gupta"
    }
    /// The level at the last pruning step at or before `at.epoch` (see the type's documentation).
    /// An invalid `frequency` of 0 gives NaN from `t₀` on, not a division by zero.
    fn value(&self, at: &Point<'_>) -> f64 {
        let s_i = self.initial.unwrap_or(at.base);
        if at.epoch < self.start_step {
            return s_i;
        }
        // k: the pruning steps made so far after t0. Dividing (rather than comparing t with
        // t0 + n·Δt) cannot overflow.
        let Some(k) = (at.epoch - self.start_step).checked_div(self.frequency) else {
            return f64::NAN;
        };
        if k >= self.pruning_steps {
            return self.final_sparsity;
        }
        if k == 0 {
            return s_i;
        }
        let remaining = 1.0 - k as f64 / self.pruning_steps as f64;
        self.final_sparsity + (s_i - self.final_sparsity) * remaining.powi(3)
    }
    fn validate(&self) -> Result<()> {
        if self.frequency == 0 {
            return Err(bad("frequency", 0, "a positive number of steps"));
        }
        if self.end_step().is_none() {
            return Err(bad(
                "pruning_steps",
                self.pruning_steps,
                format!(
                    "start_step + pruning_steps · frequency (the end of the ramp) must fit in a u64; \
                     with start_step {} and frequency {} it does not",
                    self.start_step, self.frequency
                ),
            ));
        }
        if let Some(v) = self.initial {
            finite("initial", v)?;
        }
        finite("final_sparsity", self.final_sparsity)
    }
    serde_state!();
}
