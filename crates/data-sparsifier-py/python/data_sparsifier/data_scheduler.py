"""Data schedulers: PyTorch's ``BaseDataScheduler`` and ready-made schedules on the Rust library's.

``BaseDataScheduler`` is a drop-in for ``torch.ao.pruning._experimental.data_scheduler``'s: a
subclass writes ``get_schedule_param()`` (name -> new value) and the scheduler writes the values
into the sparsifier's ``data_groups`` on each ``step()``; masks change at the sparsifier's next
step. ``StepSLScheduler``, ``LinearSLScheduler`` and ``ZhuGuptaScheduler`` take their values from
the library's ``StepSchedule``, ``LinearSchedule`` and ``ZhuGupta`` schedules.
"""

import json
import warnings
import weakref
from functools import wraps

from . import _native
from .base_data_sparsifier import BaseDataSparsifier

__all__ = ["BaseDataScheduler", "StepSLScheduler", "LinearSLScheduler", "ZhuGuptaScheduler"]


def _with_counter(method):
    """Wraps a bound ``step`` so that each call counts in ``sparsifier._step_count``."""
    if getattr(method, "_with_counter", False):
        return method
    instance_ref = weakref.ref(method.__self__)
    func, cls = method.__func__, method.__self__.__class__
    del method

    @wraps(func)
    def wrapper(*args, **kwargs):
        instance = instance_ref()
        instance._step_count += 1
        return func.__get__(instance, cls)(*args, **kwargs)

    wrapper._with_counter = True
    return wrapper


class BaseDataScheduler:
    r"""Schedules one config field (``schedule_param``) of every data group of a sparsifier.

    Call ``data_sparsifier.step()`` (e.g. per batch), then ``scheduler.step()`` (e.g. per epoch).
    Data added to the sparsifier after the scheduler is built has no base value and is not
    scheduled.
    """

    def __init__(self, data_sparsifier, schedule_param: str, last_epoch=-1, verbose=False):
        if not isinstance(data_sparsifier, BaseDataSparsifier):
            raise TypeError(
                f"{type(data_sparsifier).__name__} is not an instance of "
                "torch.ao.pruning.BaseDataSparsifier (here: data_sparsifier.BaseDataSparsifier)"
            )
        self.data_sparsifier = data_sparsifier
        self.schedule_param = schedule_param
        self.base_param = {
            name: config.get(schedule_param, None)
            for name, config in data_sparsifier.data_groups.items()
        }
        self.last_epoch = last_epoch
        data_sparsifier.step = _with_counter(data_sparsifier.step)
        data_sparsifier._step_count = 0
        self._step_count = 0
        self.verbose = verbose
        self._get_sp_called_within_step = False
        self.step()

    def get_schedule_param(self):
        """name -> the new value of ``schedule_param``; subclasses implement it."""
        raise NotImplementedError

    def __repr__(self):
        return (
            f"{self.__class__.__name__} (\nData Sparsifier {self.data_sparsifier}\n"
            f"    {self.schedule_param}: {self.base_param}\n)"
        )

    def state_dict(self):
        """Everything but the sparsifier (save the sparsifier's own state separately)."""
        return {k: v for k, v in self.__dict__.items() if k != "data_sparsifier"}

    def load_state_dict(self, state_dict):
        self.__dict__.update(state_dict)

    def get_last_param(self):
        return self._last_param

    def step(self):
        if self._step_count == 1:
            if not getattr(self.data_sparsifier.step, "_with_counter", False):
                warnings.warn(
                    "Seems like `data_sparsifier.step()` has been overridden after sparsity "
                    "scheduler initialization. Please, make sure to call `data_sparsifier.step()` "
                    "before `scheduler.step()`.",
                    UserWarning,
                    stacklevel=2,
                )
            elif self.data_sparsifier._step_count < 1:
                warnings.warn(
                    "Detected call of `scheduler.step()` before `data_sparsifier.step()`. "
                    "You have to make sure you run the data_sparsifier.step() BEFORE any "
                    "calls to the scheduler.step().",
                    UserWarning,
                    stacklevel=2,
                )
        self._step_count += 1
        self._get_sp_called_within_step = True
        try:
            self.last_epoch += 1
            updated = self.get_schedule_param()
        finally:
            self._get_sp_called_within_step = False
        groups = self.data_sparsifier.data_groups
        for name, value in updated.items():
            groups[name][self.schedule_param] = value
            if self.verbose:
                print(f"Adjusting {self.schedule_param} for group {name} to {value}")
        self._last_param = {
            name: config.get(self.schedule_param, None) for name, config in groups.items()
        }
        self.data_sparsifier.enable_mask_update = True


class _LibrarySchedule(BaseDataScheduler):
    """A scheduler whose values come from one of the library's schedules."""

    _kind = None

    def _params(self):
        raise NotImplementedError

    def get_schedule_param(self):
        if not self._get_sp_called_within_step:
            warnings.warn(
                "get_schedule_param() is meant to be called by step(); use get_last_param() "
                "for the values the scheduler last set.",
                UserWarning,
                stacklevel=2,
            )
        params = json.dumps(self._params())
        epoch = max(self.last_epoch, 0)
        out = {}
        for name, config in self.data_sparsifier.data_groups.items():
            base = self.base_param.get(name)
            if base is None:
                continue  # added after the scheduler was built: not scheduled
            value = _native.schedule_value(
                self._kind, params, name, epoch, float(base), float(config[self.schedule_param])
            )
            if self.schedule_param == "sparsity_level":
                value = min(max(value, 0.0), 1.0)  # a level past 1 prunes nothing more
            out[name] = value
        return out


class StepSLScheduler(_LibrarySchedule):
    """Multiplies the value by ``gamma`` every ``step_size`` epochs (clamped to [0, 1] for a
    sparsity level)."""

    _kind = "step"

    def __init__(self, data_sparsifier, schedule_param="sparsity_level", step_size=1, gamma=2,
                 last_epoch=-1, verbose=False):
        self.step_size, self.gamma = step_size, gamma
        super().__init__(data_sparsifier, schedule_param, last_epoch, verbose)

    def _params(self):
        return {"step_size": self.step_size, "gamma": self.gamma}


class LinearSLScheduler(_LibrarySchedule):
    """Moves the value linearly from its base (or ``start_value``) to ``end_value`` over
    ``num_epochs`` epochs from ``start_epoch``."""

    _kind = "linear"

    def __init__(self, data_sparsifier, end_value, num_epochs, schedule_param="sparsity_level",
                 start_epoch=0, start_value=None, last_epoch=-1, verbose=False):
        self.end_value, self.num_epochs = end_value, num_epochs
        self.start_epoch, self.start_value = start_epoch, start_value
        super().__init__(data_sparsifier, schedule_param, last_epoch, verbose)

    def _params(self):
        return {"start_value": self.start_value, "end_value": self.end_value,
                "start_epoch": self.start_epoch, "num_epochs": self.num_epochs}


class ZhuGuptaScheduler(_LibrarySchedule):
    """Zhu & Gupta's cubic gradual pruning: from the base (or ``initial``) to ``final_sparsity``
    over ``pruning_steps`` updates every ``frequency`` epochs from ``start_step``."""

    _kind = "zhu_gupta"

    def __init__(self, data_sparsifier, final_sparsity, pruning_steps, schedule_param="sparsity_level",
                 start_step=0, frequency=1, initial=None, last_epoch=-1, verbose=False):
        self.final_sparsity, self.pruning_steps = final_sparsity, pruning_steps
        self.start_step, self.frequency, self.initial = start_step, frequency, initial
        super().__init__(data_sparsifier, schedule_param, last_epoch, verbose)

    def _params(self):
        return {"initial": self.initial, "final_sparsity": self.final_sparsity,
                "start_step": self.start_step, "pruning_steps": self.pruning_steps,
                "frequency": self.frequency}
