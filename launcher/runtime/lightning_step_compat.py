"""Lightning's per-step Python, lightened: the second door to Lightning's internals (beside
lightning_compat.py, which installs these with every Trainer launch builds).

Lightning's own bookkeeping runs every training step and redoes work whose answer cannot have
changed (about 4 % of the benchmark's step when first measured, bench/HISTORY.md; the dispatch's
share now, bench/README section 13). Each fast path runs Lightning's
code wherever its precondition fails, and otherwise skips only work without effect: `self.log`
moving an already-placed record (a rebuild of its dicts, a deep copy of its metadata); the
training_step's signature, read at every `self.log` and batch; and, without a profiler, the label
formatted for every hook call (a module's, a strategy's, each callback's), the calls of callback
hooks not overridden, the generator behind every `profiler.profile()` block (35 a step, about 2 us
each), the debug line formatted at every hook call where debug logging is off, and nn.Module's
`__setattr__` for the name of the running hook (Lightning sets it twice a hook call, about 50
times a step: 1.2 us each through Module.__setattr__'s checks, which a plain string never meets).
"""

from __future__ import annotations

import inspect
import logging
import os
from contextlib import nullcontext
from typing import Any

from launcher.runtime.lightning_versions import check_versions

check_versions()

# after the version check: a mismatch must be reported, not crash an import
import torch  # noqa: E402
from torchmetrics import Metric  # noqa: E402

from launcher.runtime.lightning_api import Callback, module  # noqa: E402

_call, _result = module("trainer.call"), module("trainer.connectors.logger_connector.result")
_ResultMetric, _Metadata = _result._ResultMetric, _result._Metadata
_PassThroughProfiler = module("profilers").PassThroughProfiler
_SIGNATURE_USERS = ("core.module", "core.optimizer", "loops.training_epoch_loop", "loops.evaluation_loop",
                    "loops.prediction_loop", "loops.utilities", "trainer.configuration_validator",
                    "callbacks.prediction_writer")
_lightened: list[bool] = []


def lighten_step_bookkeeping() -> None:
    """Install the fast paths above in this process's Lightning (once; each falls back to Lightning's
    own code where it does not apply). LAUNCH_LIGHTNING_FAST_PATHS=0 leaves Lightning as shipped."""
    if _lightened or os.environ.get("LAUNCH_LIGHTNING_FAST_PATHS", "1") == "0":
        return
    _lightened.append(True)
    _ResultMetric.to = _moved_unless_there(_ResultMetric.to)
    checked = _signature_read_once(module("utilities.signature_utils").is_param_in_hook_signature)
    for name in _SIGNATURE_USERS:
        module(name).is_param_in_hook_signature = checked
    _call._call_callback_hooks = _callbacks_that_act(_call._call_callback_hooks)
    _call._call_lightning_module_hook = _module_hook_unlabelled(_call._call_lightning_module_hook)
    _call._call_strategy_hook = _strategy_hook_unlabelled(_call._call_strategy_hook)
    _PassThroughProfiler.profile = _unprofiled(_PassThroughProfiler.profile)


def _unprofiled(profile: Any) -> Any:
    def unprofiled(self: Any, action_name: str) -> Any:  # start() and stop() do nothing there
        return nullcontext(action_name) if type(self) is _PassThroughProfiler else profile(self, action_name)

    return unprofiled


def _on_device(value: Any, device: torch.device) -> bool:
    """Whether Lightning's move of `value` (a _ResultMetric's attributes) to `device` would change
    nothing: every tensor and Metric in it is there already. False where this walk cannot tell (a
    dataclass other than Lightning's log metadata: the caller then moves as Lightning does). One
    walk with a stack, not a call an item: the record holds about fifty, mostly flags and empty
    hook dicts."""
    pending = [value]
    while pending:
        value = pending.pop()
        kind = type(value)
        if kind in _NOTHING_TO_MOVE:
            continue
        if kind in _CONTAINERS or isinstance(value, dict | list | tuple):
            pending.extend(value.values() if isinstance(value, dict) else value)
        elif isinstance(value, torch.Tensor | Metric):
            if value.device != device:
                return False
        elif kind is not _Metadata and hasattr(value, "__dataclass_fields__"):
            return False  # other objects are not moved
    return True


# what a _ResultMetric holds besides tensors, dicts and its metadata: Lightning's move leaves these
_NOTHING_TO_MOVE = frozenset({type(None), bool, int, float, str, set, torch.device, torch.dtype, type(len),
                              type(_on_device), type(inspect.signature(_on_device))})
_CONTAINERS = frozenset({dict, list, tuple, type(torch.nn.Module()._forward_hooks)})  # the hook dicts


def _moved_unless_there(to: Any) -> Any:
    def moved(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not kwargs and len(args) == 1 and type(args[0]) is torch.device and _on_device(self.__dict__, args[0]):
            return self
        return to(self, *args, **kwargs)

    return moved


def _signature_read_once(check: Any) -> Any:
    answers: dict[tuple[Any, ...], bool] = {}

    def checked(hook_fx: Any, param: str, explicit: bool = False, min_args: int | None = None) -> bool:
        key = (getattr(hook_fx, "__func__", hook_fx), type(hook_fx), param, explicit, min_args)
        try:
            return answers[key]
        except KeyError:
            if len(answers) > 1024:  # callables made anew at each call would not be seen again
                answers.clear()
            answers[key] = answer = check(hook_fx, param, explicit, min_args)
            return answer
        except TypeError:  # an unhashable callable
            return check(hook_fx, param, explicit, min_args)

    return checked


_log = _call.log  # Lightning's logger for its hook calls (a debug line each)
_MODULE_SETATTR = torch.nn.Module.__setattr__


def _set_hook_name(pl_module: Any, name: str | None) -> None:
    """`pl_module._current_fx_name = name`, as nn.Module's __setattr__ stores a string (in the
    instance's __dict__: the name is no parameter, buffer or submodule) without its checks."""
    if type(pl_module).__setattr__ is _MODULE_SETATTR:
        pl_module.__dict__["_current_fx_name"] = name
    else:
        pl_module._current_fx_name = name


def _lean(trainer: Any) -> bool:  # nothing would read a label or the debug line
    return type(trainer.profiler) is _PassThroughProfiler and not _log.isEnabledFor(logging.DEBUG)


def _module_hook_unlabelled(call_hook: Any) -> Any:
    def call_lightning_module_hook(trainer: Any, hook_name: str, *args: Any, pl_module: Any = None,
                                   **kwargs: Any) -> Any:
        if not _lean(trainer):
            return call_hook(trainer, hook_name, *args, pl_module=pl_module, **kwargs)
        pl_module = pl_module or trainer.lightning_module
        if pl_module is None:
            raise TypeError("No `LightningModule` is available to call hooks on.")
        fn = getattr(pl_module, hook_name)
        if not callable(fn):
            return None
        previous = pl_module._current_fx_name
        _set_hook_name(pl_module, hook_name)
        output = fn(*args, **kwargs)
        _set_hook_name(pl_module, previous)  # Lightning's order: not restored where fn raises
        return output

    return call_lightning_module_hook


def _strategy_hook_unlabelled(call_hook: Any) -> Any:
    def call_strategy_hook(trainer: Any, hook_name: str, *args: Any, **kwargs: Any) -> Any:
        if not _lean(trainer):
            return call_hook(trainer, hook_name, *args, **kwargs)
        pl_module = trainer.lightning_module
        previous = pl_module._current_fx_name
        _set_hook_name(pl_module, hook_name)
        fn = getattr(trainer.strategy, hook_name)
        if not callable(fn):
            return None
        output = fn(*args, **kwargs)
        _set_hook_name(pl_module, previous)
        return output

    return call_strategy_hook


def _callbacks_that_act(call_hooks: Any) -> Any:
    def call_callback_hooks(trainer: Any, hook_name: str, *args: Any, monitoring_callbacks: bool | None = None,
                            **kwargs: Any) -> None:
        if monitoring_callbacks is not None or not _lean(trainer):
            call_hooks(trainer, hook_name, *args, monitoring_callbacks=monitoring_callbacks, **kwargs)
            return
        does_nothing = getattr(Callback, hook_name, None)
        pl_module = trainer.lightning_module
        if pl_module:
            previous = pl_module._current_fx_name
            _set_hook_name(pl_module, hook_name)
        for callback in trainer.callbacks:
            fn = getattr(callback, hook_name)
            if callable(fn) and (does_nothing is None or getattr(fn, "__func__", None) is not does_nothing):
                fn(trainer, pl_module, *args, **kwargs)
        if pl_module:
            _set_hook_name(pl_module, previous)

    return call_callback_hooks
