//! The library's ready-made schedules, for the Python data schedulers
//! (`data_sparsifier/data_scheduler.py`): one value at a point of the schedule.

use data_sparsifier::scheduler::{LinearSchedule, Point, Schedule, StepSchedule, ZhuGupta};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::IntoPyResult;

fn parse<S: serde::de::DeserializeOwned + Schedule>(params: &str) -> PyResult<S> {
    let s: S = serde_json::from_str(params)
        .map_err(|e| PyValueError::new_err(format!("invalid schedule parameters {params}: {e}")))?;
    s.validate().py()?;
    Ok(s)
}

/// The value that schedule `kind` (`"step"`, `"linear"` or `"zhu_gupta"`, with its parameters as
/// a JSON object) gives entry `name` at `epoch`, from its base and current values.
#[pyfunction]
#[pyo3(signature = (kind, params, name, epoch, base, current))]
pub(crate) fn schedule_value(
    kind: &str,
    params: &str,
    name: &str,
    epoch: u64,
    base: f64,
    current: f64,
) -> PyResult<f64> {
    let at = Point {
        name,
        epoch,
        base,
        current,
    };
    Ok(match kind {
        "step" => parse::<StepSchedule>(params)?.value(&at),
        "linear" => parse::<LinearSchedule>(params)?.value(&at),
        "zhu_gupta" => parse::<ZhuGupta>(params)?.value(&at),
        _ => {
            return Err(PyValueError::new_err(format!(
                "unknown schedule {kind:?}: expected \"step\", \"linear\" or \"zhu_gupta\""
            )))
        }
    })
}
