"""Restart loops (issue 28): a failure a restart repeats (the same error on the same rank at the
same step, no attempt getting further) stops the restarts after job.max_identical_failures
attempts; failures that progress keep their budget. On records, as the supervisor and the SLURM
end hook call record_end; the real hanging job is in tests/test_preemption.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from launcher.attempts import record_end
from launcher.events import Event
from launcher.rundir import RunDir


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    return RunDir.create(tmp_path / "runs", "job")


def attempt_fails(run: RunDir, step: int, rank: int = 1, kind: str = "stall", allowed: int = 2, restarts: int = 5):
    """One attempt that reached `step` and failed on `rank`: stalled (the supervisor's record) or a
    Python error (restart_on = "any"); returns record_end's Ending."""
    since = time.time() - 1
    run.add_event(Event.STARTED, backend="local", pid=1, host="n0", attempt=0)
    (run.path / "progress.json").write_text(json.dumps({"global_step": step}))
    if kind == "stall":
        run.add_event(Event.STALLED, rank=rank, host=f"n{rank}", idle_s=130.0, step=step, timeout_s=120)
    else:
        path = run.error_record(rank)
        path.write_text(json.dumps({"rank": rank, "host": f"n{rank}", "type": kind, "message": "bad sample 4711"}))
        os.utime(path, (since + 0.5, since + 0.5))
    return record_end(run, 1, since, 3.0, "any", max_restarts=restarts, max_identical_failures=allowed)


def failed_error(run: RunDir) -> str:
    last = run.read_events()[-1]
    assert last["event"] == "failed", last
    return last["error"]


def test_a_hang_at_the_same_step_stops_after_two_attempts(run: RunDir) -> None:
    assert attempt_fails(run, 50).restarting
    ending = attempt_fails(run, 50)
    assert not ending.restarting and not ending.finished
    assert failed_error(run).startswith("rank 1 stalled at step 50 in 2 attempts in a row: a hang in the job, not in "
                                        "the cluster; restarts stopped (job.max_identical_failures): rank 1 (n1): "
                                        "Stalled: no progress for 130.0 s since step 50")


def test_a_crash_at_the_same_step_within_the_tolerance_stops_too(run: RunDir) -> None:
    assert attempt_fails(run, 40, kind="ValueError").restarting
    assert not attempt_fails(run, 41, kind="ValueError").restarting  # progress.json may trail by a step
    assert failed_error(run).startswith("rank 1 failed with ValueError at step 41 in 2 attempts in a row: a fault in "
                                        "the job or its data, not in the cluster")


@pytest.mark.parametrize("second", [
    dict(step=80),  # it got further: the restart was worth it
    dict(step=50, rank=2),  # another rank
    dict(step=50, kind="ValueError"),  # another cause
    dict(step=30),  # a different step (earlier: a checkpoint further back and a different fault)
], ids=["progressed", "other-rank", "other-cause", "other-step"])
def test_a_failure_that_is_not_the_same_keeps_the_restart_budget(run: RunDir, second) -> None:
    assert attempt_fails(run, 50).restarting
    assert attempt_fails(run, **second).restarting


def test_the_key_sets_how_many_identical_failures_and_zero_turns_it_off(run: RunDir, tmp_path: Path) -> None:
    assert [attempt_fails(run, 50, allowed=3).restarting for _ in range(3)] == [True, True, False]
    assert "in 3 attempts in a row" in failed_error(run)
    other = RunDir.create(tmp_path / "other", "job")
    assert [attempt_fails(other, 50, allowed=0, restarts=3).restarting for _ in range(4)] == [True, True, True, False]
    assert "in a row" not in failed_error(other) and "after 3 restart(s)" in failed_error(other)


def test_progress_between_identical_failures_starts_the_count_again(run: RunDir) -> None:
    # 50, then 90 (further), then 90 again: the loop is the last two only
    assert [attempt_fails(run, s).restarting for s in (50, 90, 90)] == [True, True, False]
    assert "stalled at step 90 in 2 attempts" in failed_error(run)
