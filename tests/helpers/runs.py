"""Helpers for tests that run the preemptable job and compare it with an uninterrupted run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tests.helpers.launch import REPO, run_launch

PREEMPTABLE_JOB = """
[job]
name = "{name}"
seed = 3
restart_on = "{restart_on}"

[model]
class_path = "{model}"
init_args = {{ in_features = 64, hidden = 32, lr = 0.01, dropout = 0.3, step_sleep = {sleep}{extra_args} }}

[data]
class_path = "digits"
init_args = {{ data_dir = "{data}", batch_size = 32 }}

[trainer]
max_epochs = {epochs}
log_every_n_steps = 3
enable_progress_bar = false

[checkpoint]
monitor = "val_acc"
mode = "max"
save_top_k = 2
"""

STEPS_PER_EPOCH = 23  # 1,437 training digits, 2 ranks, batches of 32


def write_job(tmp: Path, name: str, sleep: float, epochs: int = 5, model: str = "PreemptableMLP",
              extra_args: str = "", restart_on: str = "infrastructure") -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(PREEMPTABLE_JOB.format(name=name, model=f"tests.helpers.modules.{model}", sleep=sleep,
                                           data=tmp / "data", epochs=epochs, extra_args=extra_args,
                                           restart_on=restart_on))
    return path


def events(run_dir: Path) -> list[dict]:
    """The run's events, read as launch reads them (a line still being appended is not one yet)."""
    from launcher.rundir import RunDir

    return RunDir(run_dir).read_events()


def count(run_dir: Path, name: str) -> int:
    return sum(1 for e in events(run_dir) if e["event"] == name)


def progress_step(run_dir: Path) -> int:
    try:
        return json.loads((run_dir / "progress.json").read_text())["global_step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return -1


def wait_for(predicate, timeout: float, what: str, run_dir: Path) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = (run_dir / "console.log").read_text()[-3000:] if (run_dir / "console.log").exists() else ""
            raise AssertionError(f"timed out waiting for {what}\n{(run_dir / 'events.jsonl').read_text()}\n{tail}")
        time.sleep(0.05)


def preempt_at(run_dir: Path, steps: tuple[int, ...], timeout: float = 240,
               preempt: Callable[[], subprocess.CompletedProcess] | None = None) -> list[subprocess.CompletedProcess]:
    """Preempt the run (`launch preempt`, or `preempt()`) once it has passed each of `steps`,
    waiting for each resume; returns each preempt command's result."""
    send = preempt or (lambda: run_launch("preempt", str(run_dir)))
    results = []
    for n, target in enumerate(steps, start=1):
        def reached(t: int = target, k: int = n) -> bool:
            assert not count(run_dir, "failed"), f"the run failed before step {t}: " + (run_dir / "events.jsonl").read_text()
            return progress_step(run_dir) >= t and count(run_dir, "resumed") == k - 1

        wait_for(reached, timeout, f"step {target}", run_dir)
        results.append(send())
        assert results[-1].returncode == 0, results[-1].stderr
        wait_for(lambda k=n: count(run_dir, "resumed") == k, timeout, f"resume #{n}", run_dir)
    return results


def kill_every_process(run_dir: Path) -> None:
    """What a machine's crash does to a local run: SIGKILL its supervisor, agents, ranks and
    workers at once, and wait until none is left."""
    from launcher.backends.local import processes_of
    from launcher.rundir import RunDir

    run = RunDir(run_dir)

    def kill(pids: list[int]) -> list[int]:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    kill([int(run.supervisor_pid.read_text())])
    # Again until none is left: a process forked while the list was read (a data-loader worker,
    # a rank an agent was restarting) is not in it, and a crash takes it too.
    wait_for(lambda: not kill(processes_of(run)), 30, "every process gone", run_dir)


def rank_pid(run_dir: Path, rank: int) -> int:
    """The process of `rank` in the run's current attempt: its alive marker names it (a forked rank
    carries its fork server's environment in /proc, not its own)."""
    from launcher.records import AliveMarker
    from launcher.rundir import RunDir

    marker = AliveMarker.read(RunDir(run_dir).alive_marker(rank))
    assert marker is not None and marker.pid is not None, f"no alive marker for rank {rank} in {run_dir}"
    return marker.pid


def submit(job: Path, runs: Path, *extra: str) -> Path:
    result = run_launch("submit", str(job), "--runs-dir", str(runs), *extra)
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


def wait_end(run_dir: Path, timeout: float = 300) -> dict:
    wait_for(lambda: count(run_dir, "finished") + count(run_dir, "failed") > 0, timeout, "the run to end", run_dir)
    assert_events_typed(run_dir)
    return json.loads(run_launch("status", str(run_dir), "--json").stdout)


def assert_events_typed(run_dir: Path) -> None:
    """Every key the run's events hold is a field of its event's class (launcher/events.py): a
    key launch writes but does not type would be read back as nothing."""
    from launcher.events import unknown_keys

    untyped = [(e["event"], sorted(keys)) for e in events(run_dir) if (keys := unknown_keys(e))]
    assert not untyped, f"{run_dir}: event keys without a field: {untyped}"


def read_checkpoint(path: Path) -> dict:
    """A checkpoint as one dict: a file as saved; a sharded (FSDP) directory read back whole, with
    torch's own converter (every shard, the optimizers' too) and meta.pt."""
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False)
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    assert (path / "complete.json").is_file(), f"{path} is not a complete sharded checkpoint"
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(path, Path(tmp) / "whole.pt")
        full = torch.load(Path(tmp) / "whole.pt", map_location="cpu", weights_only=False)
    full.update(torch.load(path / "meta.pt", map_location="cpu", weights_only=False))
    optimizers = sorted((k for k in full if k.startswith("optimizer_") and k[len("optimizer_"):].isdigit()),
                        key=lambda k: int(k[len("optimizer_"):]))
    full["optimizer_states"] = [full.pop(k) for k in optimizers]
    return full


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state_dict"]


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def assert_same_tensors(a: object, b: object, where: str = "") -> None:
    """Nested dicts, lists and tensors equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), \
            f"{where}: max |d| {(a.double() - b.double()).abs().max().item():.3g}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def max_weight_difference(run: Path, baseline: Path) -> float:
    a, b = final_state(run), final_state(baseline)
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def assert_same_training(run: Path, baseline: Path) -> None:
    a, b = final_state(run), final_state(baseline)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, (f"weights differ from the uninterrupted run: {different} "
                           f"(max |dw| {max_weight_difference(run, baseline):.3g})")
    full, base_full = (read_checkpoint(r / "checkpoints" / "last.ckpt") for r in (run, baseline))
    assert_same_tensors(full["optimizer_states"], base_full["optimizer_states"], "optimizer_states")
    assert_same_tensors(full["lr_schedulers"], base_full["lr_schedulers"], "lr_schedulers")
    rows, base_rows = metric_rows(run), metric_rows(baseline)
    assert len(rows) == len(base_rows)
    for row, base in zip(rows, base_rows, strict=True):
        assert row == base
    # TensorBoard: one run continued across restarts (an event file per attempt), every step once
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
        acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
        acc.Reload()
        return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}

    ours, theirs = scalars(run), scalars(baseline)
    assert sorted(ours) == sorted(theirs) and len(theirs) >= 4, sorted(theirs)
    for tag in theirs:  # every scalar, every step
        assert ours[tag] == theirs[tag], tag


# The user's own model and data (tests/helpers/lit.py, lit_pl.py) at 3 ranks: the plain script's
# uninterrupted run is the reference of every script, LightningCLI project and LightningCLI config
# that trains them, in both namespaces (conftest's `lit_baseline`)
LIT_SCRIPT = "tests/scripts/train_lit.py"
LIT_STEPS = 15  # 1,437 training digits over 3 ranks, batches of 32
LIT_SHAPE = ("--procs", "3", "--set", "checkpoint.every_n_train_steps=5")


def lit_reference(runs: Path) -> Path:
    run_dir = submit(REPO / LIT_SCRIPT, runs, *LIT_SHAPE, "--", "--epochs", "3")
    info = wait_end(run_dir, timeout=400)
    assert info["state"] == "completed" and info["global_step"] == 3 * LIT_STEPS, info
    return run_dir


# What must not reach the user of a run launch resumed exactly: warnings launch makes untrue, and
# third-party adverts (issue 27: the console tells the truth)
UNTRUE_IN_CONSOLE = (
    "your dataloader is not resumable",  # Lightning: "can cause unreliable results"
    "`weights_only` was not set",  # Lightning, at every save of launch's own checkpoints
    "exists and is not empty",  # Lightning, at every resume into the run's checkpoints/
    "The `srun` command is available",  # Lightning's guess; launch chooses the environment
    "LeafSpec",  # pytorch_lightning's use of a deprecated torch API
    "litlogger",  # an advert
    "Seed set to 0",  # launch's own seeding of a script, before the script's
)


def assert_console_truthful(run_dir: Path, attempts: int) -> None:
    """The console of a run resumed `attempts - 1` times holds none of UNTRUE_IN_CONSOLE; its last
    line counts the whole run; every attempt's `started` counts the run's restarts before it."""
    import re

    console = (run_dir / "console.log").read_text()
    found = [text for text in UNTRUE_IN_CONSOLE if text in console]
    assert not found, f"{found} in {run_dir / 'console.log'}"
    last = [line for line in console.splitlines() if line.startswith("[launch] run ")][-1]
    took = re.search(r"completed in ([0-9.]+) s \(" + str(attempts) + r" attempts; the last ([0-9.]+) s\)", last)
    assert took and float(took[1]) > float(took[2]), last
    started = [e for e in events(run_dir) if e["event"] == "started"]
    assert [e.get("restart_count") for e in started] == list(range(attempts)), started
    (finished,) = [e for e in events(run_dir) if e["event"] == "finished"]
    assert finished["attempts"] == attempts and finished["elapsed_s"] == float(took[1]), finished


def ran_on(run_dir: Path, namespace: str) -> None:
    """The ranks ran that Lightning namespace's Trainer ("lightning.pytorch" or "pytorch_lightning"),
    in every attempt, and never imported the other (rank zero's `training_started` events)."""
    started = [e for e in events(run_dir) if e["event"] == "training_started"]
    assert started and all(e["lightning"] == namespace and e["lightning_loaded"] == [namespace] for e in started), started
