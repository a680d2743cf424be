"""Exact resume where real jobs live: world size 4, DataLoader workers, random augmentation in the
workers, every scheduler and callback of the job file, stateful and iterable datasets.

Every comparison is bit for bit against an uninterrupted run of the same job: weights, optimizer
and scheduler state, every metrics.csv row and every TensorBoard scalar.
"""

from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path

import pytest
import torch.multiprocessing as mp

from launcher.rundir import RunDir
from launcher.runtime import beat_channel, cpython_compat
from tests.helpers.launch import run_launch
from tests.helpers.runs import (
    assert_same_training,
    count,
    events,
    kill_every_process,
    metric_rows,
    preempt_at,
    progress_step,
    submit,
    wait_end,
    wait_for,
)

pytestmark = pytest.mark.multiprocess

JOB = """
[job]
name = "{name}"
seed = 11

[model]
class_path = "tests.helpers.modules.PreemptableMLP"
init_args = {{ in_features = 3072, hidden = 32, lr = 0.01, dropout = 0.3, step_sleep = {sleep} }}

[data]
class_path = "tests.helpers.images.AugmentedImages"
init_args = {{ size = 256, val_size = 64, batch_size = 8, num_workers = {workers}, persistent_workers = {persistent} }}

[trainer]
max_epochs = 3
log_every_n_steps = 2
enable_progress_bar = false
num_sanity_val_steps = 0
"""

WORLD = ("--nodes", "2", "--procs", "2")  # two torchrun agents (nodes) of two ranks each
STEPS_PER_EPOCH = 8  # 256 images, 4 ranks, batches of 8


def write(tmp: Path, name: str, sleep: float, workers: int = 2, persistent: bool = True, extra: str = "") -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(JOB.format(name=name, sleep=sleep, workers=workers, persistent=str(persistent).lower()) + extra)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rewrap_differences(world: int, settings: list[tuple[dict, bool]]) -> tuple[list[float], bool]:
    from tests.helpers.ddp_rewrap import rank_main

    out = mp.get_context("spawn").SimpleQueue()
    mp.spawn(rank_main, args=(world, free_port(), settings, out), nprocs=world)
    return out.get()


def test_ddp_rewrapped_mid_run_at_world_size_4_reduces_in_the_same_order_with_launchs_settings() -> None:
    """The root cause of the world-size difference: DDP's first iteration reduces the gradients in
    another bucket layout than the iterations after it, and every resume is a first iteration."""
    (default, fixed, unused), untouched = rewrap_differences(4, [({}, False), ({}, True),
                                                                 ({"find_unused_parameters": True}, False)])
    assert default > 0  # torch's default: the resumed step sums in another order
    assert fixed == 0  # launch's: the buckets laid out once, before the first step (ddp_compat)
    assert unused == 0  # job.find_unused_parameters: DDP never rebuilds
    assert untouched  # laying them out changed no weight, gradient or RNG state


@pytest.fixture(scope="module")
def world4_baseline(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("world4")
    report = tmp / "last.jsonl"
    probe = f'[[callbacks]]\nclass_path = "tests.helpers.modules.LastCheckpointProbe"\ninit_args = {{ report = "{report}" }}\n'
    run_dir = submit(write(tmp, "w4", sleep=0.0, extra=probe), tmp / "runs", *WORLD)
    info = wait_end(run_dir, timeout=400)
    assert info["state"] == "completed" and info["world_size"] == 4, info
    # each epoch end's last.ckpt: written at the first, then the top-k file of its step (a hard link)
    looks = [json.loads(line) for line in report.read_text().splitlines()]
    assert [(look["epoch"], look["linked"]) for look in looks] == [(1, False), (2, True), (3, True)], looks
    # it learns (so its weights depend on every random draw: dropout, noise, augmentation)
    assert float([r for r in metric_rows(run_dir) if r["val_acc"]][-1]["val_acc"]) > 0.3  # chance: 0.1
    return run_dir


def test_every_rank_of_a_2_node_run_with_workers_measured_its_step_compute(world4_baseline) -> None:
    """The straggler watch's measurement (tests/test_stragglers.py names a slow rank) where the
    data comes from DataLoader workers, on 2 torchrun agents: every rank's last heartbeat holds it."""
    beats = RunDir(world4_baseline).read_heartbeats()
    assert [b.rank for b in beats if b.compute_s and b.compute_s > 0] == [0, 1, 2, 3], beats
    # one heartbeat file a node, from its leader (runtime/beat_channel.py), and every rank ended done
    assert sorted(p.name for p in (world4_baseline / "heartbeats").iterdir()) == ["node-0.json", "node-1.json"]
    assert all(b.done for b in beats) and not list(beat_channel.node_local_root().glob(f"launch-*-{world4_baseline.name}-*"))


def test_world_size_4_with_augmenting_workers_preempted_twice_ends_bit_identical(world4_baseline, tmp_path) -> None:
    """2 nodes x 2 ranks, 2 persistent workers per rank augmenting at random (torchvision v1 and
    v2, numpy, python random), dropout and noise in the model; preempted mid-epoch twice."""
    run_dir = submit(write(tmp_path, "w4", sleep=0.15), tmp_path / "runs", *WORLD)
    preempt_at(run_dir, (5, STEPS_PER_EPOCH + 3))
    info = wait_end(run_dir, timeout=400)
    assert info["state"] == "completed" and info["restarts"] == 2, info
    preempted = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert len(preempted) == 2 and all(0 < e["batch_in_epoch"] < STEPS_PER_EPOCH for e in preempted), preempted
    assert all(e["mid_epoch"] for e in events(run_dir) if e["event"] == "resumed")
    assert_same_training(run_dir, world4_baseline)
    # every attempt forked its workers under the fork guard (runtime/cpython_compat.py: without it,
    # a worker forked while a gloo thread held CPython 3.11's thread-state lock never started)
    started = [e for e in events(run_dir) if e["event"] == "training_started"]
    assert len(started) == 3 and all(e["fork_guard"] is cpython_compat.written_for() for e in started), started
    # no rank hung joining its workers at exit: every attempt's ranks exited on their own
    assert json.loads(run_launch("status", str(run_dir), "--json").stdout)["error"] is None


def test_non_persistent_workers_preempted_then_cancelled_and_resumed_match_the_persistent_baseline(
        world4_baseline, tmp_path) -> None:
    """Workers made anew every epoch (and by every attempt) instead of persistent ones: with each
    sample's seed fixed by where it is, and no loader drawing from the global RNG, the worker
    set-up changes nothing, so the persistent-worker baseline is the reference. Preempted once,
    then `launch cancel` mid-epoch: torchrun's shutdown SIGTERMs each rank's whole process group,
    workers included, and the ranks still save at the next batch (the workers ignore it), so
    `launch resume` continues exactly."""
    run_dir = submit(write(tmp_path, "w4", sleep=0.15, persistent=False), tmp_path / "runs", *WORLD)
    preempt_at(run_dir, (4,))
    wait_for(lambda: progress_step(run_dir) >= STEPS_PER_EPOCH + 4, 240, "a step mid-epoch 2", run_dir)
    cancel = run_launch("cancel", str(run_dir))
    assert cancel.returncode == 0 and "cancelled" in cancel.stdout, cancel.stdout + cancel.stderr
    saved = [e for e in events(run_dir) if e["event"] == "preempted"][-1]
    assert saved["signal"] == "SIGTERM" and 0 < saved["batch_in_epoch"] < STEPS_PER_EPOCH, events(run_dir)
    resumed = run_launch("resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    info = wait_end(run_dir, timeout=400)
    assert info["state"] == "completed" and info["restarts"] == 2, info
    assert [e["checkpoint"] for e in events(run_dir) if e["event"] == "resumed"] == ["preempt.ckpt"] * 2
    assert_same_training(run_dir, world4_baseline)


# --------------------------------------------------------------------------- hard crashes


@pytest.mark.parametrize("seed", [int(os.environ.get("LAUNCH_TEST_SEED", "7"))])
def test_every_process_killed_twice_at_random_resumes_from_the_periodic_checkpoint_bit_identical(
        world4_baseline, tmp_path, seed) -> None:
    """The machine dies (SIGKILL of the supervisor, agents, ranks and workers at once) twice, at
    steps drawn at random (LAUNCH_TEST_SEED picks others); `launch resume` continues from the
    newest time-based periodic full-state checkpoint (every 1.2 s here), and the history
    (metrics.csv, TensorBoard) holds each step once. (The step-interval checkpoint is resumed from
    in test_code_snapshot.py and test_reliability.py, and by `launch verify`.)"""
    rng = random.Random(seed)
    kills = (rng.randint(6, 10), rng.randint(13, 20))
    print(f"seed {seed}: kills after steps {kills}")
    run_dir = submit(write(tmp_path, "w4", sleep=0.15, extra="\n[checkpoint]\nevery_n_minutes = 0.02\n"), tmp_path / "runs",
                     *WORLD)
    periodic = run_dir / "checkpoints" / "resume.ckpt"

    def saved_since_start() -> bool:
        """A periodic checkpoint taken by this attempt: the first is due 1.2 s in and taken at the
        next agreement, which fast steps can outrun (a kill before it restarts from scratch)."""
        started = [e["t"] for e in events(run_dir) if e["event"] == "training_started"][-1]
        return periodic.is_file() and periodic.stat().st_mtime > started

    for n, target in enumerate(kills, start=1):
        wait_for(lambda t=target, k=n: progress_step(run_dir) >= t and count(run_dir, "resumed") == k - 1
                 and saved_since_start(), 300, f"step {target} and a periodic checkpoint", run_dir)
        kill_every_process(run_dir)
        killed_at = progress_step(run_dir)
        result = run_launch("resume", str(run_dir), "--runs-dir", str(tmp_path / "runs"))
        assert result.returncode == 0, result.stderr
        wait_for(lambda k=n: count(run_dir, "resumed") == k, 300, f"resume #{n}", run_dir)
        resumed = [e for e in events(run_dir) if e["event"] == "resumed"][-1]
        print(f"killed at step {killed_at}, resumed at step {resumed['global_step']} from {resumed['checkpoint']}: "
              f"{killed_at - resumed['global_step']} steps recomputed, {resumed['csv_rows_dropped']} rows rewound")
        assert resumed["checkpoint"] == "resume.ckpt" and resumed["mid_epoch"], resumed
        # due every 1.2 s, seen at the stop agreement (about once a second), taken at the next
        # safe boundary: at about 0.3 s a step here, never more than about 10 steps back
        assert 0 <= killed_at - resumed["global_step"] <= 12, resumed
    info = wait_end(run_dir, timeout=400)
    assert info["state"] == "completed" and info["global_step"] == 3 * STEPS_PER_EPOCH, info
    assert_same_training(run_dir, world4_baseline)  # weights, optimizer, every row and scalar once
    assert not (run_dir / "checkpoints" / "resume.ckpt").exists()  # superseded by last.ckpt


# --------------------------------------------------------------------------- every scheduler and callback

TOOLBOX_JOB = """
[job]
name = "{name}"
seed = 4

[model]
class_path = "tests.helpers.modules.{model}"
init_args = {{ in_features = 64, hidden = 32, lr = 0.05, dropout = 0.2, step_sleep = {sleep} }}

[data]
class_path = "digits"
init_args = {{ data_dir = "{data}", batch_size = 64 }}

[trainer]
max_epochs = 3
log_every_n_steps = 2
enable_progress_bar = false
num_sanity_val_steps = 0
{extra}
"""
TOOLBOX_STEPS = 12  # 1,437 training digits, 2 ranks, batches of 64 (the last one short)
ADAMW = '[optimizer]\nname = "adamw"\nlr = 0.01\n'
TOOLBOX = {
    "step-per-epoch": ("PreemptableMLP", ADAMW + '[lr_scheduler]\nname = "step"\ninterval = "epoch"\nstep_size = 1\ngamma = 0.5'),
    # with every callback and logger option the job file offers (they are independent of the scheduler)
    "cosine-per-epoch-callbacks-and-logging": ("PreemptableMLP", ADAMW + '[lr_scheduler]\nname = "cosine"\ninterval = "epoch"\n'
                                               '[early_stopping]\nmonitor = "val_loss"\npatience = 5\n'
                                               '[checkpoint]\nmonitor = "val_acc"\nmode = "max"\nsave_top_k = 2\n'
                                               'every_n_train_steps = 7\n[logging]\ngrad_norm = true\nhistograms = true'),
    "plateau": ("PreemptableMLP", ADAMW + '[lr_scheduler]\nname = "plateau"\nmonitor = "val_loss"\npatience = 0\nfactor = 0.5'),
    "onecycle": ("PreemptableMLP", ADAMW + '[lr_scheduler]\nname = "onecycle"'),
    "models-own-epoch-scheduler": ("EpochScheduledMLP", ""),
    "swa": ("PreemptableMLP", ADAMW + "[swa]\nswa_lrs = 0.005\nswa_epoch_start = 1\nannealing_epochs = 1"),
}


@pytest.mark.parametrize("variant", list(TOOLBOX))
def test_every_scheduler_and_callback_survives_a_mid_epoch_preemption_bit_for_bit(variant, tmp_path) -> None:
    model, extra = TOOLBOX[variant]
    runs = []
    for name, sleep in (("plain", 0.0), ("stopped", 0.12)):  # started together: their start-ups overlap
        job = tmp_path / f"{name}.toml"
        job.write_text(TOOLBOX_JOB.format(name=name, model=model, sleep=sleep, data=tmp_path / "data", extra=extra))
        runs.append(submit(job, tmp_path / "runs"))
    baseline, run_dir = runs
    preempt_at(run_dir, (TOOLBOX_STEPS + 3,))
    for r in runs:
        info = wait_end(r)
        assert info["state"] == "completed" and info["global_step"] == 3 * TOOLBOX_STEPS, info
    (preempted,) = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert 0 < preempted["batch_in_epoch"] < TOOLBOX_STEPS, preempted  # mid-epoch: an epoch end follows the resume
    assert_same_training(run_dir, baseline)


# --------------------------------------------------------------------------- iterable datasets

STREAM_JOB = TOOLBOX_JOB.replace('class_path = "digits"', 'class_path = "tests.helpers.streams.StreamingDigits"').replace(
    "batch_size = 64 }}", "batch_size = 64, stateful = {stateful}, sized = {sized}, workers = {workers} }}")


@pytest.mark.parametrize("sized,workers", [(True, 0), (False, 0), (False, 2)],
                         ids=["with-length", "without-length", "torchdata-loader-2-workers"])
def test_a_stateful_iterable_dataset_resumes_exactly_per_rank(tmp_path, sized, workers) -> None:
    """Per rank: each rank streams its own shard. Without a length, Lightning fetches one batch
    ahead of training, so the state at the save (the dataset's own, or torchdata's
    StatefulDataLoader's with each worker's) is one batch too far."""
    runs = []
    for name, sleep in (("plain", 0.0), ("stopped", 0.12)):
        job = tmp_path / f"{name}.toml"
        job.write_text(STREAM_JOB.format(name=name, model="PreemptableMLP", sleep=sleep, data=tmp_path / "data",
                                         extra="", stateful="true", sized=str(sized).lower(), workers=workers))
        runs.append(submit(job, tmp_path / "runs"))
    baseline, run_dir = runs
    preempt_at(run_dir, (TOOLBOX_STEPS + 3,))
    for r in runs:
        info = wait_end(r)
        assert info["state"] == "completed" and info["global_step"] == 3 * (1437 // 2 // 64 + 1), info
    (preempted,) = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert preempted["batch_in_epoch"] > 0
    assert_same_training(run_dir, baseline)


def test_a_plain_stream_with_2_workers_a_rank_at_world_size_3_preempted_twice_is_replayed_bit_for_bit(tmp_path) -> None:
    """A stream without state (told its epoch by set_epoch, augmenting in the workers) is continued
    by replay: each rank's workers stream the epoch again and the batches already trained are
    dropped. 479 digits a rank, two workers: 8 batches an epoch, stopped twice part-way through one."""
    runs = []
    for name, sleep in (("plain", 0.0), ("stopped", 0.15)):
        job = tmp_path / f"{name}.toml"
        job.write_text(STREAM_JOB.format(name=name, model="PreemptableMLP", sleep=sleep, data=tmp_path / "data",
                                         extra="", stateful="false", sized="false", workers=2)
                       .replace("workers = 2 }", 'workers = 2, plain = "epoch" }'))
        runs.append(submit(job, tmp_path / "runs", "--procs", "3"))
    baseline, run_dir = runs
    preempt_at(run_dir, (2, 11))
    for r in runs:
        info = wait_end(r)
        assert info["state"] == "completed" and info["global_step"] == 3 * 8, info
    stops = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert len(stops) == 2 and all(0 < e["batch_in_epoch"] < 8 for e in stops), stops  # mid-epoch, where it lands
    console = (run_dir / "logs" / "rank-0.log").read_text()
    for e in stops:
        assert (f"replaying the training stream (EpochStream) to where epoch {e['epoch']} stopped: fetching and "
                f"dropping {e['batch_in_epoch']} batch(es), {e['batch_in_epoch'] * 64} items, on each rank") in console
    assert_same_training(run_dir, baseline)


def test_a_plain_stream_read_by_persistent_workers_is_refused_in_one_line_before_training(tmp_path) -> None:
    job = tmp_path / "persistent.toml"
    job.write_text(STREAM_JOB.format(name="persistent", model="PreemptableMLP", sleep=0.0, data=tmp_path / "data",
                                     extra="", stateful="false", sized="true", workers=1)
                   .replace("workers = 1 }", 'workers = 1, plain = "epoch", persistent = true }'))
    info = wait_end(submit(job, tmp_path / "runs"))
    assert info["state"] == "failed" and info["global_step"] == 0, info
    assert "UnresumableData: the training data is an IterableDataset (EpochStream) without a state launch can keep, " \
           "read by persistent workers: each keeps its copy of the stream from epoch to epoch" in info["error"], \
        info["error"]
    assert "\n" not in info["error"] and "set persistent_workers = False" in info["error"]
    # opting out of preemption runs it
    job.write_text(job.read_text().replace("seed = 4", "seed = 4\npreemptible = false"))
    assert wait_end(submit(job, tmp_path / "runs"))["state"] == "completed"
