"""Preemption: a run stopped by the cluster's signal, any number of times, ends exactly where an
uninterrupted run ends: the same weights bit for bit, and the same logged metric rows."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import run_launch

pytestmark = pytest.mark.multiprocess

PREEMPTABLE_JOB = """
[job]
name = "{name}"
seed = 3

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
              extra_args: str = "") -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(PREEMPTABLE_JOB.format(name=name, model=f"tests.helpers.modules.{model}", sleep=sleep,
                                           data=tmp / "data", epochs=epochs, extra_args=extra_args))
    return path


def events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


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


def submit(job: Path, runs: Path, *extra: str) -> Path:
    result = run_launch("submit", str(job), "--runs-dir", str(runs), *extra)
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


def wait_end(run_dir: Path, timeout: float = 300) -> dict:
    wait_for(lambda: count(run_dir, "finished") + count(run_dir, "failed") > 0, timeout, "the run to end", run_dir)
    return json.loads(run_launch("status", str(run_dir), "--json").stdout)


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def metric_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def assert_same_training(run: Path, baseline: Path) -> None:
    a, b = final_state(run), final_state(baseline)
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ from the uninterrupted run: {different}"
    rows, base_rows = metric_rows(run), metric_rows(baseline)
    assert len(rows) == len(base_rows)
    for row, base in zip(rows, base_rows, strict=True):
        assert row == base
    # TensorBoard: one run continued across restarts (an event file per attempt), every step once
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
        acc = EventAccumulator(str(run_dir / "tensorboard"))
        acc.Reload()
        return [(e.step, e.value) for e in acc.Scalars(tag)]

    for tag in ("train_loss_step", "train_noise_step", "val_acc", "train_acc"):
        assert scalars(run, tag) == scalars(baseline, tag), tag


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """One uninterrupted run of the preemptable job."""
    tmp = tmp_path_factory.mktemp("baseline")
    run_dir = submit(write_job(tmp, "pre", sleep=0.0), tmp / "runs")
    info = wait_end(run_dir)
    assert info["state"] == "completed", info
    assert info["global_step"] == 5 * STEPS_PER_EPOCH
    return run_dir


def test_preempted_three_times_mid_epoch_ends_bit_identical_to_uninterrupted(baseline, tmp_path) -> None:
    run_dir = submit(write_job(tmp_path, "pre", sleep=0.05), tmp_path / "runs")
    for n, target in enumerate((10, 45, 80), start=1):
        wait_for(lambda t=target, k=n: progress_step(run_dir) >= t and count(run_dir, "resumed") == k - 1, 180,
                 f"step {target}", run_dir)
        result = run_launch("preempt", str(run_dir))
        assert result.returncode == 0 and "SIGUSR1" in result.stdout, result.stderr
        wait_for(lambda k=n: count(run_dir, "resumed") == k, 180, f"resume #{n}", run_dir)
    info = wait_end(run_dir)
    assert info["state"] == "completed" and info["restarts"] == 3, info
    preempted = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert len(preempted) == 3 and count(run_dir, "requeued") == 3
    for e in preempted:  # each one mid-epoch, and the save is quick
        assert 0 < e["batch_in_epoch"] < STEPS_PER_EPOCH, e
        assert e["signal"] == "SIGUSR1" and e["checkpoint_bytes"] > 0
    assert all(e["mid_epoch"] for e in events(run_dir) if e["event"] == "resumed")
    assert info["global_step"] == 5 * STEPS_PER_EPOCH
    assert_same_training(run_dir, baseline)
    assert not (run_dir / "checkpoints" / "preempt.ckpt").exists()  # superseded by last.ckpt


def rank_pid(run_dir: Path, rank: int) -> int:
    needle = f"LAUNCH_RUN_DIR={run_dir}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in env and f"RANK={rank}".encode() in env and b"TORCHELASTIC_RUN_ID" in b"".join(env):
            if any(e.startswith(b"LOCAL_RANK=") for e in env):
                return int(entry.name)
    raise AssertionError(f"no process for rank {rank}")


def test_a_signal_to_one_rank_stops_all_ranks_at_the_same_step(baseline, tmp_path) -> None:
    run_dir = submit(write_job(tmp_path, "pre", sleep=0.05), tmp_path / "runs")
    wait_for(lambda: progress_step(run_dir) >= 30, 180, "step 30", run_dir)
    os.kill(rank_pid(run_dir, 1), signal.SIGUSR1)  # mid-step, on rank 1 only
    wait_for(lambda: count(run_dir, "resumed") == 1, 180, "the resume", run_dir)
    (preempted,) = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert preempted["signal"] == "from another rank"  # rank 0 never saw it, yet stopped
    logs = [(run_dir / "logs" / f"rank-{r}.log").read_text() for r in (0, 1)]
    stop_line = f"preemption: all ranks stop after step {preempted['step']} "
    assert all(stop_line in log for log in logs)
    info = wait_end(run_dir)
    assert info["state"] == "completed", info
    assert_same_training(run_dir, baseline)


def test_rank_killed_while_writing_the_checkpoint_keeps_the_previous_and_resume_completes(tmp_path) -> None:
    job = write_job(tmp_path, "big", sleep=0.05, epochs=3, model="BigPreemptableMLP", extra_args=", ballast_mb = 300")
    run_dir = submit(job, tmp_path / "runs")
    ckpts = run_dir / "checkpoints"
    wait_for(lambda: progress_step(run_dir) >= STEPS_PER_EPOCH + 5, 240, "epoch 1", run_dir)  # epoch-0 checkpoints exist
    before = {p.name: p.stat().st_mtime_ns for p in ckpts.glob("*.ckpt")}
    assert "last.ckpt" in before
    assert run_launch("preempt", str(run_dir)).returncode == 0
    wait_for(lambda: any(ckpts.glob(".preempt.ckpt.tmp-*")), 60, "the preemption checkpoint write", run_dir)
    os.kill(rank_pid(run_dir, 0), signal.SIGKILL)  # rank 0 writes the checkpoint
    info = wait_end(run_dir)
    assert info["state"] == "failed" and not (ckpts / "preempt.ckpt").exists(), info
    for name, mtime in before.items():  # the previous checkpoints are untouched and load
        assert (ckpts / name).stat().st_mtime_ns == mtime
        assert "state_dict" in torch.load(ckpts / name, map_location="cpu", weights_only=False)
    result = run_launch("resume", str(run_dir), "--follow", timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout[-3000:]
    info = json.loads(run_launch("status", str(run_dir), "--json").stdout)
    assert info["state"] == "completed" and info["global_step"] == 3 * STEPS_PER_EPOCH
    assert run_launch("resume", str(run_dir)).returncode == 2  # nothing left to resume
