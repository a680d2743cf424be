"""Lightning's per-step bookkeeping, lightened (lightning_step_compat.lighten_step_bookkeeping): each
fast path does what Lightning's own code does, and skips only work without effect. (Every
bit-for-bit test of the suite runs with them: logged rows and weights.)"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import subprocess
import sys

import torch
from torch.utils.data import DataLoader, TensorDataset

from launcher.runtime import lightning_compat as compat
from launcher.runtime import lightning_step_compat as step_compat
from launcher.runtime.lightning_api import Callback, LightningModule, Trainer, module
from tests.helpers.launch import REPO

step_compat.lighten_step_bookkeeping()


def test_a_logged_record_on_the_values_device_is_left_as_it_is_and_moved_as_lightning_moves_it_otherwise() -> None:
    results = module("trainer.connectors.logger_connector.result")._ResultCollection(training=True)
    for value, size in ((1.5, 4), (2.0, 2)):
        results.log("training_step", "loss", torch.tensor(value), on_step=False, on_epoch=True, batch_size=size)
    record = results["training_step.loss"]
    assert record.value.item() == 1.5 * 4 + 2.0 * 2 and record.cumulated_batch_size.item() == 6  # Lightning's sums
    defaults, meta = record._defaults, record.meta
    assert record.to(torch.device("cpu")) is record
    assert record._defaults is defaults and record.meta is meta  # nothing rebuilt, nothing copied
    record.to(torch.device("meta"))  # elsewhere: Lightning's own move
    assert record.value.device.type == "meta" and record.cumulated_batch_size.device.type == "meta"
    assert record._defaults is not defaults and record.meta == meta


def _decorated(fn):  # noqa: ANN001, ANN202
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return fn(*args, **kwargs)

    return wrapper


class _Steps:
    def step(self, batch, batch_idx): ...  # noqa: ANN001, ANN201

    def batch_only(self, batch): ...  # noqa: ANN001, ANN201

    def anything(self, *args): ...  # noqa: ANN002, ANN201

    @_decorated
    def iterator(self, dataloader_iter): ...  # noqa: ANN001, ANN201


def test_a_hook_signature_is_read_once_a_function_and_answers_as_lightning_does(monkeypatch) -> None:
    original = module("utilities.signature_utils").is_param_in_hook_signature
    checked = module("core.module").is_param_in_hook_signature
    assert checked is not original
    assert all(module(name).is_param_in_hook_signature is checked for name in step_compat._SIGNATURE_USERS)
    hooks = [_Steps().step, _Steps().batch_only, _Steps().anything, _Steps().iterator, _Steps.step, _Steps.batch_only]
    questions = [("batch_idx", False, 2), ("dataloader_iter", True, None), ("batch_idx", False, None),
                 ("dataloader_iter", False, None)]
    for hook in hooks:
        for question in questions:
            assert checked(hook, *question) == original(hook, *question), (hook, question)
            assert checked(hook, *question) == original(hook, *question), (hook, question)
    reads = []
    real = inspect.getfullargspec
    monkeypatch.setattr(inspect, "getfullargspec", lambda fn: reads.append(fn) or real(fn))

    def training_step(self, batch): ...  # noqa: ANN001, ANN202

    for _ in range(5):
        assert checked(training_step.__get__(object()), "batch_idx", min_args=2) is False  # a new bound method each time
    assert len(reads) == 1

    def training_step(self, batch, batch_idx): ...  # noqa: ANN001, ANN202, F811

    assert checked(training_step.__get__(object()), "batch_idx", min_args=2) is True  # another function: read again
    assert len(reads) == 2


class _Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(64, 4)), batch_size=4)


class _Recorder(Callback):
    """Records every hook call it sees, with the LightningModule's current hook name then (and that
    the module it is handed is the Trainer's)."""

    def __init__(self, calls: list) -> None:
        self.calls = calls

    def _seen(self, name: str, pl_module: LightningModule) -> None:
        assert pl_module is pl_module.trainer.lightning_module
        self.calls.append((name, pl_module._current_fx_name))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):  # noqa: ANN001, ANN201
        self._seen("start", pl_module)

    def on_before_backward(self, trainer, pl_module, loss):  # noqa: ANN001, ANN201
        self._seen("before_backward", pl_module)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):  # noqa: ANN001, ANN201
        self._seen("before_optimizer_step", pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # noqa: ANN001, ANN201
        self._seen("end", pl_module)


class _Quiet(Callback):
    """Overrides no hook; counts how often its state key (the profiler's label) is formatted."""

    reads = 0

    @property
    def state_key(self) -> str:
        _Quiet.reads += 1
        return "_Quiet"


def _hook_calls(tmp_path, steps: int, profiler: str | None) -> tuple[list, int]:  # noqa: ANN001
    calls: list = []
    instance_hooked = Callback()  # a hook set on the instance, as tools that wrap callbacks do
    instance_hooked.on_train_batch_end = lambda trainer, pl_module, *args: calls.append(("instance", len(args)))
    _Quiet.reads = 0
    _fit(tmp_path, _Tiny(), steps, profiler, [_Recorder(calls), _Quiet(), instance_hooked])
    return calls, _Quiet.reads


def _fit(tmp_path, model: LightningModule, steps: int, profiler: str | None, callbacks: list) -> None:  # noqa: ANN001
    """A bare one-device fit (no logger, checkpoint, bar or summary) with launch's Trainer set-up."""
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, profiler=profiler,
                      default_root_dir=tmp_path, callbacks=callbacks)
    compat.disable_lightning_signal_handling(trainer)
    trainer.fit(model)


def test_without_a_profiler_callbacks_see_every_hook_lightning_calls_and_no_labels_are_formatted(tmp_path) -> None:
    lean, lean_reads = _hook_calls(tmp_path / "a", 3, None)
    profiled, profiled_reads = _hook_calls(tmp_path / "b", 3, "simple")  # a profiler: Lightning's own dispatch
    assert lean == profiled
    assert lean[:5] == [("start", "on_train_batch_start"), ("before_backward", "on_before_backward"),
                        ("before_optimizer_step", "on_before_optimizer_step"), ("end", "on_train_batch_end"),
                        ("instance", 3)]
    assert len(lean) == 3 * 5
    longer, longer_reads = _hook_calls(tmp_path / "c", 9, None)
    assert len(longer) == 9 * 5
    assert longer_reads == lean_reads < profiled_reads  # none a step: labels only where a profiler uses them


class _Named(_Tiny):
    """Records, in its own hooks and in the strategy's training_step and backward, the running
    hook's name, and every name set on it through its class's own __setattr__ (if it has one)."""

    def __init__(self, seen: list) -> None:
        super().__init__()
        self.seen = seen

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        self.seen.append(("training_step", self._current_fx_name))
        return super().training_step(batch, batch_idx)

    def on_train_batch_start(self, batch, batch_idx):  # noqa: ANN001, ANN201
        self.seen.append(("on_train_batch_start", self._current_fx_name))

    def on_before_zero_grad(self, optimizer):  # noqa: ANN001, ANN201
        self.seen.append(("on_before_zero_grad", self._current_fx_name))

    def backward(self, loss, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        self.seen.append(("backward", self._current_fx_name))
        super().backward(loss, *args, **kwargs)


class _NamedWithSetattr(_Named):
    def __setattr__(self, name: str, value) -> None:  # noqa: ANN001
        if name == "_current_fx_name" and "seen" in self.__dict__:
            self.seen.append(("set", value))
        super().__setattr__(name, value)


def _module_hook_names(tmp_path, model_class: type, profiler: str | None) -> list:  # noqa: ANN001
    seen: list = []
    model = model_class(seen)
    _fit(tmp_path, model, 2, profiler, [])
    return seen + [("after", model._current_fx_name)]


def test_module_and_strategy_hooks_run_under_their_names_as_in_lightning_and_a_setattr_of_its_own_still_runs(
        tmp_path, caplog) -> None:  # noqa: ANN001
    lean = _module_hook_names(tmp_path / "a", _Named, None)
    assert lean == _module_hook_names(tmp_path / "b", _Named, "simple")  # a profiler: Lightning's own dispatch
    assert lean[:4] == [("on_train_batch_start", "on_train_batch_start"), ("training_step", "training_step"),
                        ("on_before_zero_grad", "on_before_zero_grad"), ("backward", "backward")]
    own = _module_hook_names(tmp_path / "c", _NamedWithSetattr, None)  # the class's __setattr__ sees every name
    assert [s for s in own if s[0] != "set"] == lean
    assert ("set", "training_step") in own and ("set", "on_train_batch_start") in own
    assert own == _module_hook_names(tmp_path / "d", _NamedWithSetattr, "simple")
    with caplog.at_level(logging.DEBUG, logger=step_compat._log.name):  # its debug lines, where asked for
        _module_hook_names(tmp_path / "e", _Named, None)
    assert "calling lightning module hook: on_train_batch_start" in caplog.text
    assert "calling strategy hook: training_step" in caplog.text


def test_the_running_hooks_name_is_stored_without_module_setattrs_checks(monkeypatch) -> None:
    checks = []
    meta = type(torch.nn.Parameter)
    real = meta.__instancecheck__
    monkeypatch.setattr(meta, "__instancecheck__", lambda cls, obj: checks.append(obj) or real(cls, obj))
    model = _Tiny()
    model._current_fx_name = "training_step"  # nn.Module's __setattr__: checks the value
    assert checks
    checks.clear()
    step_compat._set_hook_name(model, "on_train_batch_end")
    assert model._current_fx_name == "on_train_batch_end" and not checks
    assert "_current_fx_name" not in model._parameters | model._buffers | model._modules


def test_a_pass_through_profiler_block_does_nothing_without_a_generator_and_a_subclass_still_profiles() -> None:
    PassThrough = module("profilers").PassThroughProfiler
    block = PassThrough().profile("run_training_batch")
    assert not inspect.isgenerator(getattr(block, "gen", None))  # no generator made for an empty block
    with block as name:
        assert name == "run_training_batch"  # what Lightning's block yields

    class Counting(PassThrough):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list = []

        def start(self, action_name: str) -> None:
            self.seen.append(("start", action_name))

        def stop(self, action_name: str) -> None:
            self.seen.append(("stop", action_name))

    counting = Counting()
    with counting.profile("x") as name:
        assert name == "x" and counting.seen == [("start", "x")]
    assert counting.seen == [("start", "x"), ("stop", "x")]


def test_the_fast_paths_stay_out_where_the_environment_says_so() -> None:
    """LAUNCH_LIGHTNING_FAST_PATHS=0 (cluster.env): Lightning as shipped, to rule launch out."""
    probe = ("from launcher.runtime import lightning_step_compat as c; c.lighten_step_bookkeeping(); "
             "print(c._ResultMetric.to.__qualname__, c._call._call_callback_hooks.__qualname__, "
             "c.module('core.module').is_param_in_hook_signature.__qualname__, "
             "c._PassThroughProfiler.profile.__qualname__, c._call._call_lightning_module_hook.__qualname__, "
             "c._call._call_strategy_hook.__qualname__)")
    shipped = ("_ResultMetric.to _call_callback_hooks is_param_in_hook_signature Profiler.profile "
               "_call_lightning_module_hook _call_strategy_hook")
    for value, expected in (("0", shipped), ("1", None)):
        out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True,
                             env={**os.environ, "LAUNCH_LIGHTNING_FAST_PATHS": value}).stdout.strip()
        assert (out == shipped) == (expected is not None), out
