"""Preemption: a run stopped by the cluster's signal, any number of times, ends exactly where an
uninterrupted run ends: the same weights bit for bit, and the same logged metric rows."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from tests.helpers.launch import run_launch
from tests.helpers.runs import (
    STEPS_PER_EPOCH,
    assert_same_training,
    count,
    events,
    preempt_at,
    progress_step,
    rank_pid,
    submit,
    wait_end,
    wait_for,
    write_job,
)

pytestmark = pytest.mark.multiprocess

@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """One uninterrupted run of the preemptable job."""
    tmp = tmp_path_factory.mktemp("baseline")
    run_dir = submit(write_job(tmp, "pre", sleep=0.0), tmp / "runs")
    info = wait_end(run_dir)
    assert info["state"] == "completed", info
    assert info["global_step"] == 5 * STEPS_PER_EPOCH
    return run_dir


def test_preempted_three_times_a_rank_killed_and_a_rank_stopped_ends_bit_identical_to_uninterrupted(
        baseline, tmp_path) -> None:
    """A run that stops for every reason: three preemptions mid-epoch; one rank SIGKILLed (as the OOM
    killer does); one rank SIGSTOPped (a stall: no progress, no heartbeat). job.restart_on =
    "infrastructure" (the default) restarts it by itself each time from its newest periodic
    checkpoint (every 5 steps), recording why; it ends as if nothing happened, bit for bit."""
    job = write_job(tmp_path, "pre", sleep=0.05)
    job.write_text(job.read_text().replace("save_top_k = 2", "save_top_k = 2\nevery_n_train_steps = 5")
                   .replace('restart_on = "infrastructure"', 'restart_on = "infrastructure"\nstall_timeout_s = 10'))
    run_dir = submit(job, tmp_path / "runs")
    for result in preempt_at(run_dir, (10, 35, 60), timeout=180):
        assert "SIGUSR1" in result.stdout, result.stdout
    # Between checkpoints (every 5), once a periodic one was written since the last resume: the ranks
    # agree on a stop up to a second after the signal (20 steps of this job), so the third
    # preemption may land past step 72, and a kill right after its resume would resume from it.
    last = [e for e in events(run_dir) if e["event"] == "preempted"][-1]["step"]
    kill_at = max(72, last + 7)
    wait_for(lambda: progress_step(run_dir) >= kill_at, 180, f"step {kill_at}", run_dir)
    os.kill(rank_pid(run_dir, 1), signal.SIGKILL)
    wait_for(lambda: count(run_dir, "resumed") == 4 and progress_step(run_dir) >= 93, 180, "step 93", run_dir)
    os.kill(rank_pid(run_dir, 1), signal.SIGSTOP)
    stalled = None
    while stalled is None and count(run_dir, "restarted") == 1:  # status names it; the supervisor stops it
        # (while the supervisor stops it, the attempt is still running and the stall still shows)
        stalled = json.loads(run_launch("status", str(run_dir), "--json").stdout)["stalled"]
    info = wait_end(run_dir)
    assert info["state"] == "completed" and info["restarts"] == 5, info
    assert stalled is not None and stalled["rank"] == 1 and not stalled["beating"], stalled
    preempted = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert len(preempted) == 3 and count(run_dir, "requeued") == 3
    for e in preempted:  # each one mid-epoch, and the save is quick
        assert 0 < e["batch_in_epoch"] < STEPS_PER_EPOCH, e
        assert e["signal"] == "SIGUSR1" and e["checkpoint_bytes"] > 0
    killed, stopped = [e for e in events(run_dir) if e["event"] == "restarted"]
    assert killed["kind"] == "infrastructure" and killed["rank"] == 1 and ": Died: " in killed["cause"], killed
    assert stopped["kind"] == "infrastructure" and stopped["rank"] == 1 and ": Stalled: no progress for " in stopped["cause"]
    (stall_event,) = [e for e in events(run_dir) if e["event"] == "stalled"]
    assert stall_event["rank"] == 1 and 10 <= stall_event["idle_s"] < 20, stall_event
    resumed = [e for e in events(run_dir) if e["event"] == "resumed"]
    assert len(resumed) == 5 and all(e["mid_epoch"] for e in resumed)
    assert all(e["global_step"] % 5 == 0 for e in resumed[3:]), resumed  # from the periodic checkpoints
    shown = run_launch("status", str(run_dir)).stdout
    assert "restart   #2 after " in shown and "time      wall " in shown and "goodput" in shown, shown
    # the time ledger: every second of the run in one phase; the steps since the periodic checkpoints counted
    book = info["ledger"]
    phases = [book[k] for k in ("queue_s", "requeue_s", "stopped_s", "start-up_s", "training_s", "checkpoints_s",
                                "stopping_s", "finishing_s", "unrecorded_s")]
    assert abs(sum(phases) - book["wall_s"]) < 0.01 and book["checkpoints_s"] > 0 and book["stopped_s"] == 0, book
    again = sum(r["step_reached"] - s["global_step"] for r, s in zip((killed, stopped), resumed[3:], strict=True))
    assert book["recomputed_steps"] == again, (book, killed, stopped)  # > 0 unless a stop fell on a checkpoint
    assert 0 < book["goodput"] < 1, book
    assert info["global_step"] == 5 * STEPS_PER_EPOCH
    assert_same_training(run_dir, baseline)
    assert not (run_dir / "checkpoints" / "preempt.ckpt").exists()  # superseded by last.ckpt

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
    job = write_job(tmp_path, "big", sleep=0.05, epochs=3, model="BigPreemptableMLP", extra_args=", ballast_mb = 300",
                    restart_on="never")  # the failed attempt, then launch resume
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


def test_preempt_before_any_rank_runs_is_refused_instead_of_lost(tmp_path) -> None:
    """Before the ranks start (and between two attempts) only the supervisor and torchrun's agent
    exist, and they ignore the signal: launch says so instead of reporting it sent."""
    run_dir = submit(write_job(tmp_path, "early", sleep=0.05, epochs=1), tmp_path / "runs")
    early = run_launch("preempt", str(run_dir))  # the agent is still importing torch
    assert early.returncode == 2 and "no rank is running yet" in early.stderr, early.stdout + early.stderr
    assert early.stderr.count("\n") == 1
    info = wait_end(run_dir)
    assert info["state"] == "completed" and info["restarts"] == 0 and info["note"] is None, info


def test_a_signal_after_the_last_stop_point_is_reported_not_dropped(tmp_path) -> None:
    """A signal during the final test cannot stop the run (nothing is left to resume): the run
    completes, and its status says the signal came too late."""
    run_dir = submit(write_job(tmp_path, "late", sleep=0.0, epochs=1, model="SlowTestMLP"), tmp_path / "runs")
    log = run_dir / "logs" / "rank-0.log"
    wait_for(lambda: log.exists() and "testing now" in log.read_text(errors="replace"), 240, "the test", run_dir)
    assert run_launch("preempt", str(run_dir)).returncode == 0
    info = wait_end(run_dir)
    assert info["state"] == "completed" and info["restarts"] == 0, info
    assert "a preemption signal (SIGUSR1) came after the last point training could stop" in info["note"], info
    assert "note      a preemption signal" in run_launch("status", str(run_dir)).stdout

