"""The run lifecycle as a specification: synthetic `events.jsonl` files and rank records in, the
status `launch status` shows out. Pure and fast: no processes, no cluster, no torch."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import tempfile
import time
from pathlib import Path

import pytest

from launcher import attempts, lifecycle, stalls
from launcher.attempts import first_error, record_end, record_not_requeued
from launcher.backends.base import Backend
from launcher.backends.local import LocalBackend
from launcher.backends.slurm import EntryPoint, SlurmBackend, explain_end, task_entry
from launcher.lifecycle import Event, Probe, State, summarize
from launcher.records import Heartbeat, RankError
from launcher.rundir import RunDir

ALIVE = Probe(alive=True, details={"supervisor_pid": 123})
GONE = Probe(alive=False, ended_as=(State.FAILED, "the run's supervisor is gone without recording an end (killed?)"))


def status(events: list[dict], probe: Probe = ALIVE, progress: dict | None = None) -> lifecycle.RunStatus:
    timed = [{"time": f"t{i}", **e} for i, e in enumerate(events)]
    return summarize(timed, progress or {}, probe, run_id="R", job="J", run_dir="/runs/J/R", backend="local")


def ev(name: Event, **fields) -> dict:
    return {"event": str(name), **fields}


# --------------------------------------------------------------------------- every state

@pytest.mark.parametrize("events,state", [
    ([], State.UNKNOWN),
    ([ev(Event.SUBMITTED)], State.PENDING),
    ([ev(Event.SUBMITTED), ev(Event.QUEUED)], State.PENDING),
    ([ev(Event.SUBMITTED), ev(Event.STARTED)], State.RUNNING),
    ([ev(Event.SUBMITTED), ev(Event.STARTED), ev(Event.TRAINING_STARTED), ev(Event.FIRST_STEP)], State.RUNNING),
    ([ev(Event.SUBMITTED), ev(Event.STARTED), ev(Event.PREEMPTED), ev(Event.REQUEUED)], State.PENDING),
    ([ev(Event.SUBMITTED), ev(Event.STARTED), ev(Event.PREEMPTED), ev(Event.REQUEUED), ev(Event.STARTED),
      ev(Event.RESUMED)], State.RUNNING),
    ([ev(Event.SUBMITTED), ev(Event.STARTED), ev(Event.TRAINED), ev(Event.FINISHED)], State.COMPLETED),
    ([ev(Event.SUBMITTED), ev(Event.STARTED), ev(Event.FAILED, error="boom")], State.FAILED),
    ([ev(Event.SUBMITTED), ev(Event.STARTED), ev(Event.CANCEL_REQUESTED), ev(Event.CANCELLED)], State.CANCELLED),
    ([ev(Event.SUBMITTED), ev(Event.STARTED), ev(Event.CANCELLED), ev(Event.RESUME_REQUESTED)], State.PENDING),
    ([ev(Event.SUBMITTED), ev(Event.STARTED), ev(Event.FAILED), ev(Event.RESUME_REQUESTED), ev(Event.STARTED),
      ev(Event.FINISHED), ev(Event.PREDICTED), ev(Event.TUNED), ev(Event.EXPORTED)], State.COMPLETED),
    ([ev(Event.SUBMITTED), ev(Event.QUEUED), ev(Event.STARTED), ev(Event.PREEMPTED), ev(Event.REQUEUE_FAILED)],
     State.RUNNING),
], ids=lambda v: "-".join(str(e["event"]) for e in v) or "none" if isinstance(v, list) else str(v))
def test_the_state_is_the_one_implied_by_the_last_lifecycle_event(events, state) -> None:
    info = status(events)
    assert info.state == state
    assert info.terminal == (state in (State.COMPLETED, State.FAILED, State.CANCELLED))
    assert info.over == (state not in (State.PENDING, State.RUNNING))


def test_every_event_and_state_has_one_spelling() -> None:
    assert len({e.value for e in Event}) == len(Event) == 23
    assert set(lifecycle.STATE_OF_EVENT.values()) | {State.UNKNOWN} == set(State)
    # the string in events.jsonl is the plain name
    assert json.dumps({"event": Event.FIRST_STEP}) == '{"event": "first_step"}'


@pytest.mark.parametrize("probe,state,error", [
    (GONE, State.FAILED, "the run's supervisor is gone without recording an end (killed?)"),
    (Probe(alive=False, ended_as=explain_end("CANCELLED")), State.CANCELLED, "cancelled outside launch (scancel)"),
    (Probe(alive=False, ended_as=explain_end("TIMEOUT")), State.FAILED, "the job reached its time limit"),
    (Probe(alive=False, ended_as=explain_end(None)), State.FAILED,
     "the job ended without recording its end (SLURM state unknown)"),
    (Probe(alive=False, ended_as=explain_end("NODE_FAIL")), State.FAILED,
     "the job ended without recording its end (SLURM state NODE_FAIL)"),
    (ALIVE, State.RUNNING, None),
])
def test_a_run_gone_without_recording_its_end_takes_the_backends_explanation(probe, state, error) -> None:
    info = status([ev(Event.SUBMITTED), ev(Event.STARTED)], probe)
    assert (info.state, info.error) == (state, error)


def test_a_recorded_end_is_not_overridden_by_the_probe() -> None:
    info = status([ev(Event.SUBMITTED), ev(Event.STARTED), ev(Event.FAILED, error="rank 1 (n2): X: y", exit_code=1,
                                                                  rank=1)], GONE)
    assert (info.state, info.error, info.exit_code, info.failed_rank) == (State.FAILED, "rank 1 (n2): X: y", 1, 1)
    assert status([ev(Event.SUBMITTED), ev(Event.STARTED), ev(Event.FINISHED)], GONE).state == State.COMPLETED


@pytest.mark.parametrize("events,scheduler,state", [
    ([ev(Event.SUBMITTED), ev(Event.STARTED)], State.PENDING, State.PENDING),  # SLURM requeued it itself
    ([ev(Event.SUBMITTED), ev(Event.QUEUED)], State.RUNNING, State.RUNNING),  # started, not recorded yet
    ([ev(Event.SUBMITTED), ev(Event.STARTED), ev(Event.PREEMPTED), ev(Event.REQUEUED)], None, State.PENDING),
    ([ev(Event.SUBMITTED), ev(Event.STARTED), ev(Event.CANCELLED)], State.RUNNING, State.CANCELLED),
    ([ev(Event.SUBMITTED), ev(Event.STARTED), ev(Event.FINISHED)], State.PENDING, State.COMPLETED),
], ids=["requeued-by-slurm", "started-unrecorded", "completing", "cancelled", "finished"])
def test_the_scheduler_says_pending_or_running_where_it_knows(events, scheduler, state) -> None:
    """`pending` only while SLURM has not started the job: its own state wins over the history's
    pending/running, never over an end the run recorded."""
    assert status(events, Probe(alive=True, scheduler_state=scheduler)).state == state


def test_a_job_completing_only_on_lost_nodes_has_ended() -> None:
    state, why = explain_end("COMPLETING", ["n2"])
    assert state == State.FAILED and "COMPLETING on n2, which do(es) not answer" in why


def test_restarts_count_the_attempts_after_the_first() -> None:
    attempt = [ev(Event.STARTED), ev(Event.PREEMPTED), ev(Event.REQUEUED)]
    assert status([ev(Event.SUBMITTED)]).restarts == 0
    assert status([ev(Event.SUBMITTED), *attempt]).restarts == 0
    assert status([ev(Event.SUBMITTED), *attempt * 3, ev(Event.STARTED)]).restarts == 3


def test_position_and_metrics_come_from_trained_else_progress() -> None:
    progress = {"global_step": 40, "epoch": 1, "metrics": {"val_acc": 0.5}, "world_size": 4}
    running = status([ev(Event.SUBMITTED), ev(Event.STARTED)], progress=progress)
    assert (running.global_step, running.epoch, running.world_size, dict(running.metrics)) == (40, 1, 4, {"val_acc": 0.5})
    done = status([ev(Event.SUBMITTED), ev(Event.STARTED), ev(Event.TRAINED, global_step=115, epoch=4,
                                                               metrics={"test_acc": 0.9})], progress=progress)
    assert (done.global_step, done.epoch, dict(done.metrics)) == (115, 4, {"test_acc": 0.9})


def test_the_json_view_keeps_every_key_status_json_had() -> None:
    info = status([ev(Event.SUBMITTED), ev(Event.STARTED), ev(Event.FAILED, error="e", exit_code=3, rank=0)],
                  Probe(alive=False, details={"slurm_job_id": "7", "slurm_state": "FAILED"}))
    view = info.as_dict()
    for key in ("run_id", "job", "run_dir", "state", "terminal", "global_step", "epoch", "restarts", "world_size",
                "metrics", "error", "exit_code", "failed_rank", "backend", "submitted_at", "started_at", "failed_at",
                "slurm_job_id", "slurm_state"):
        assert key in view, key
    assert view["state"] == "failed" and view["terminal"] is True and view["submitted_at"] == "t0"
    assert json.loads(json.dumps(view)) == view


# --------------------------------------------------------------------------- naming the failure


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    return RunDir.create(tmp_path / "runs", "job")


def rank_error(run: RunDir, rank: int, kind: str, message: str, age_s: float = 0.0) -> None:
    path = run.error_record(rank)
    path.write_text(json.dumps({"rank": rank, "host": f"n{rank}", "type": kind, "message": message}))
    t = time.time() - age_s
    os.utime(path, (t, t))


def died(run: RunDir, rank: int) -> None:
    run.alive_marker(rank).write_text(json.dumps({"rank": rank, "host": f"n{rank}", "pid": 1}))


def test_a_python_error_is_named_before_the_echoes_it_caused(run: RunDir) -> None:
    since = time.time() - 5
    rank_error(run, 0, "RuntimeError", "Connection closed by peer [127.0.0.1]:123", age_s=2)  # earlier, an echo
    rank_error(run, 2, "ValueError", "bad batch", age_s=1)
    died(run, 3)
    assert first_error(run, since).rank == 2


def test_a_rank_that_died_without_a_word_comes_before_echoes(run: RunDir) -> None:
    since = time.time() - 5
    rank_error(run, 0, "DistBackendError", "Connection reset by peer")
    died(run, 3)
    died(run, 1)
    err = first_error(run, since)
    assert (err.rank, err.type, err.host) == (1, "Died", "n1")
    assert "killed by a signal" in err.message and "(also ranks 3)" in err.message
    assert "; then rank 0: DistBackendError: Connection reset by peer" in err.message


@pytest.mark.parametrize("echo", [
    ("RuntimeError", "[gloo/transport/tcp/pair.cc:534] Timed out waiting 8000ms for recv operation to complete"),
    ("RuntimeError", "Application timeout caused pair closure"),
    ("DistBackendError", "[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=9, OpType=ALLREDUCE) "
                         "ran for 600012 milliseconds before timing out."),
])
def test_a_silent_rank_the_others_timed_out_on_is_named_hung(run: RunDir, echo: tuple[str, str]) -> None:
    since = time.time() - 5
    rank_error(run, 0, *echo)
    died(run, 1)
    err = first_error(run, since)
    assert (err.rank, err.type) == (1, "Hung")
    assert err.message.startswith("stopped responding: rank 0 waited job.collective_timeout_s"), err.message
    assert "logs/rank-1.log" in err.message and f"; then rank 0: {echo[0]}: {echo[1][:40]}" in err.message


def test_a_silent_rank_the_others_lost_the_connection_to_died(run: RunDir) -> None:
    rank_error(run, 0, "RuntimeError", "Connection closed by peer [10.0.0.2]:4321")
    died(run, 1)
    assert first_error(run, time.time() - 5).type == "Died"


def test_only_echoes_name_the_earliest(run: RunDir) -> None:
    since = time.time() - 5
    rank_error(run, 1, "RuntimeError", "Timed out waiting", age_s=1)
    rank_error(run, 0, "RuntimeError", "Broken pipe", age_s=2)
    assert first_error(run, since).rank == 0


def test_records_of_an_earlier_attempt_are_ignored(run: RunDir) -> None:
    rank_error(run, 1, "ValueError", "from yesterday", age_s=3600)
    assert first_error(run, time.time() - 5) is None


def test_record_end_finished_only_when_training_completed(run: RunDir) -> None:
    run.add_event(Event.TRAINED, global_step=10, metrics={"val_acc": 0.75}, interrupted=False)
    ending = record_end(run, 0, time.time(), 12.5)
    finished, summary = ending.finished, ending.summary
    assert finished and summary == "completed in 12.5 s: step 10, val_acc 0.75"
    assert run.read_events()[-1]["event"] == "finished"


def test_record_end_counts_the_whole_run_not_the_last_attempt(run: RunDir) -> None:
    """A run submitted 600 s ago, requeued once: `completed in` and the `finished` event say 600 s
    and 2 attempts, not the last attempt's 12.5 s."""
    t0 = time.time() - 600
    run.add_event(Event.SUBMITTED, t=t0)
    run.add_event(Event.STARTED, t=t0 + 5)
    run.add_event(Event.STARTED, t=t0 + 580)
    run.add_event(Event.TRAINED, global_step=10, metrics={"val_acc": 0.75}, interrupted=False)
    summary = record_end(run, 0, t0 + 580, 20.0).summary
    assert re.fullmatch(r"completed in 60\d\.\d s \(2 attempts; the last 2\d\.\d s\): step 10, val_acc 0\.75", summary), summary
    finished = run.read_events()[-1]
    assert 600 <= finished["elapsed_s"] < 610 and 20 <= finished["attempt_s"] < 30 and finished["attempts"] == 2, finished


@pytest.mark.parametrize("exit_code,trained,expected", [
    (0, None, "the ranks exited without completing training"),
    (0, {"interrupted": True}, "the ranks exited without completing training"),
    (137, None, "the ranks exited with 137; see "),
])
def test_record_end_failed_says_why(run: RunDir, exit_code, trained, expected) -> None:
    if trained is not None:
        run.add_event(Event.TRAINED, global_step=3, **trained)
    finished = record_end(run, exit_code, time.time(), 1.0).finished
    last = run.read_events()[-1]
    assert not finished and last["event"] == "failed" and last["error"].startswith(expected)
    assert last["exit_code"] == (exit_code or 1) and last["rank"] is None


def test_record_end_names_the_failing_rank(run: RunDir) -> None:
    since = time.time() - 1
    rank_error(run, 1, "RuntimeError", "boom on rank 1")
    record_end(run, 1, since, 2.0)
    last = run.read_events()[-1]
    assert (last["rank"], last["error"]) == (1, "rank 1 (n1): RuntimeError: boom on rank 1")


def test_a_preempted_attempt_not_requeued_fails_with_the_resume_command(run: RunDir) -> None:
    for name in (Event.SUBMITTED, Event.STARTED, Event.PREEMPTED):
        run.add_event(name)
    attempt = lifecycle.names(lifecycle.this_attempt(run.read_events()))
    assert attempt == ["preempted"]
    record_not_requeued(run, 0)
    info = lifecycle.status_of(run, GONE, "slurm")
    assert info.state == State.FAILED and info.error.endswith(f"launch resume {run.path}")


# --------------------------------------------------------------------------- backends


@pytest.mark.parametrize("backend", [LocalBackend(), SlurmBackend()], ids=["local", "slurm"])
def test_each_backend_implements_the_whole_protocol(backend) -> None:
    wanted = [name for name in vars(Backend) if not name.startswith("_")] + list(Backend.__annotations__)
    missing = [name for name in wanted if not hasattr(backend, name)]
    assert not missing


def test_the_slurm_task_is_pickled_as_a_reference_to_the_entry_function() -> None:
    import cloudpickle

    from launcher.config import JobConfig
    from launcher.config.schema import ClusterProfile, ComponentSection, JobSection

    for mode, name in (("srun", "run_rank"), ("torchrun", "run_node")):
        cfg = JobConfig(job=JobSection(name="j"), model=ComponentSection("mlp"), data=ComponentSection("digits"),
                        cluster=ClusterProfile(launch_mode=mode))
        entry = task_entry(cfg)
        assert isinstance(entry, EntryPoint)
        loaded = pickle.loads(cloudpickle.dumps(entry))  # what the task does
        assert (loaded.__module__, loaded.__name__) == ("launcher.entry.slurm_task", name)


# --------------------------------------------------------------------------- restarts (job.restart_on)


@pytest.mark.parametrize("failure,kind", [
    (lambda run: died(run, 1), "infrastructure"),  # SIGKILL, the OOM killer, a segfault
    (lambda run: rank_error(run, 0, "DistBackendError", "NCCL error: unhandled system error"), "infrastructure"),
    (lambda run: rank_error(run, 0, "RuntimeError", "[Gloo] Connection closed by peer [n2]:1234"), "infrastructure"),
    (lambda run: None, "infrastructure"),  # non-zero exit and not a word from any rank
    (lambda run: rank_error(run, 1, "ValueError", "bad shape in my_model.forward"), "code"),
], ids=["killed", "nccl", "gloo-peer-lost", "silent-exit", "python-exception"])
def test_a_failure_restarts_only_when_the_policy_covers_it(run: RunDir, failure, kind) -> None:
    failure(run)
    since = time.time() - 5
    for policy, restarts in (("infrastructure", kind == "infrastructure"), ("any", True), ("never", False)):
        events_before = len(run.read_events())
        ending = record_end(run, 1, since, 3.0, policy, max_restarts=3)
        added = run.read_events()[events_before:]
        assert ending.restarting == restarts and not ending.finished, (policy, ending)
        assert [e["event"] for e in added] == (["restarted"] if restarts else ["failed"])
        if restarts:
            assert added[0]["kind"] == kind and added[0]["restart"] == 1 + sum(
                e["event"] == "restarted" for e in run.read_events()[:events_before])
            assert status(run.read_events()).state == State.PENDING


def test_restarts_exhausted_fail_with_every_cause(run: RunDir) -> None:
    died(run, 1)
    since = time.time() - 5
    endings = [record_end(run, 1, since, float(i), "infrastructure", max_restarts=2) for i in range(3)]
    assert [e.restarting for e in endings] == [True, True, False]
    assert "restart 2 of 2" in endings[1].summary
    last = run.read_events()[-1]
    assert last["event"] == "failed" and last["error"].count("Died") == 3, last  # its own, and the two before
    assert "after 2 restart(s): rank 1 (n1): Died" in last["error"]


def test_a_preemption_that_used_more_than_half_the_grace_is_warned_about() -> None:
    def requeued(used: float | None) -> list[dict]:
        return [{"event": "preempted", "step": 3}, {"event": "requeued", "signal_to_exit_s": used}]

    assert attempts.grace_warning(requeued(59.0), 120) is None
    assert attempts.grace_warning(requeued(None), 120) is None  # not measured (no signal time)
    warning = attempts.grace_warning(requeued(61.0), 120)
    assert warning is not None and "took 61 s" in warning and "120 s grace (cluster.signal_grace_s)" in warning
    # only the last preemption counts
    assert attempts.grace_warning(requeued(90.0) + requeued(10.0), 120) is None


# --------------------------------------------------------------------------- stalls (heartbeats)


def beat(rank: int, progress_at: float, beat_at: float, slowest: float = 0.2, stepped: bool = True) -> Heartbeat:
    return Heartbeat(rank=rank, host=f"n{rank}", step=37, progress_at=progress_at, beat_at=beat_at,
                     slowest_step_s=slowest, stepped=stepped)


def test_a_rank_whose_training_is_over_is_not_stalled() -> None:
    """After fit and test the rank's heartbeat says done: its last records, plots and exit take
    what they take (seen on a loaded machine: 11 s after `trained`, with a 10 s stall timeout)."""
    now = 1000.0
    quiet = beat(0, now - 60, now - 55)
    assert stalls.find_stall([quiet], now, since=900.0) is not None
    done = Heartbeat(**{**quiet.to_json(), "done": True})
    assert stalls.find_stall([done, beat(1, now - 1, now - 1)], now, since=900.0) is None
    assert "done" not in beat(0, now, now).to_json() and done.to_json()["done"] is True


def test_a_stopped_rank_is_named_before_the_ranks_waiting_for_it() -> None:
    now = 1000.0
    waiting, stopped = beat(0, now - 45, now - 2), beat(1, now - 44, now - 43)  # rank 1 stopped beating
    found = stalls.find_stall([waiting, stopped], now, since=900.0)
    assert found is not None and found.beat.rank == 1 and not found.beating
    assert stalls.describe_stall(found) == "rank 1 (n1) no progress for 44 s, since step 37; no heartbeat for 43 s"
    # only the waiting one, e.g. a hang in rank 0's own code
    found = stalls.find_stall([waiting, beat(1, now - 1, now - 1)], now, since=900.0)
    assert found is not None and found.beat.rank == 0 and "still beating (waiting)" in stalls.describe_stall(found)


def test_no_stall_while_progressing_before_the_first_step_slow_steps_or_last_attempt() -> None:
    now = 1000.0
    assert stalls.find_stall([beat(0, now - 29, now - 1)], now, since=900.0) is None  # under 30 s
    assert stalls.find_stall([beat(0, now - 60, now - 1, stepped=False)], now, since=900.0) is None  # compiling?
    # but a rank stopped before its first step's heartbeat is named once it is silent that long
    early = [beat(0, now - 11, now - 1), beat(1, now - 12, now - 12, stepped=False)]
    found = stalls.find_stall(early, now, since=900.0, after_s=10)
    assert found is not None and found.beat.rank == 1 and not found.beating
    assert stalls.find_stall([beat(0, now - 60, now - 1, slowest=25.0)], now, since=900.0) is None  # 3 slow steps
    # the run's slowest step sets the limit for every rank: rank 1 stopped during a slow step of rank 0
    slow_run = [beat(0, now - 35, now - 1, slowest=0.2), beat(1, now - 36, now - 34, slowest=15.0)]
    assert stalls.find_stall(slow_run, now, since=900.0) is None
    assert stalls.find_stall(slow_run, now + 10, since=900.0).beat.rank == 1
    assert stalls.find_stall([beat(0, now - 200, now - 150)], now, since=990.0) is None  # an earlier attempt's file
    assert stalls.find_stall([beat(0, now - 121, now - 1)], now, since=900.0, after_s=120).idle_s == 121


def test_a_node_gone_silent_after_a_rank_died_of_a_lost_peer_is_named_without_the_stall_timeout() -> None:
    """Issue 26: a node killed under a run. Its ranks stop beating without a word; a rank of another
    node dies at once of gloo's "Connection closed by peer" (an echo). That is a lost node now, not
    a stall to wait out for job.stall_timeout_s."""
    now = 10_000.0
    from dataclasses import replace

    beats = [replace(beat(0, now - 9, now - 9), host="n1"), replace(beat(1, now - 9, now - 9), host="n2"),
             replace(beat(2, now - 9, now - 9), host="n2"), replace(beat(3, now - 1, now - 1), host="n3")]
    echo = RankError(0, "n1", "RuntimeError", "[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [n2]:3")
    found = stalls.find_lost_node(beats, now, 9000.0, lambda: [echo])
    assert found is not None and (found.beat.rank, found.node_silent, found.beating) == (1, True, False), found
    assert stalls.describe_stall(found) == ("rank 1 (n2) and every rank of its node silent for 9 s, since step 37, "
                                            "while another rank died of a lost peer: a lost node")
    assert stalls.find_lost_node(beats, now, 9000.0, lambda: []) is None  # no lost peer: the stall timeout decides
    cause = RankError(0, "n1", "ValueError", "bad batch")  # a rank that failed in its own code: not a lost node
    assert stalls.find_lost_node(beats, now, 9000.0, lambda: [cause]) is None
    assert stalls.find_lost_node(beats, now - 3, 9000.0, lambda: [echo]) is None  # beats 6 s old: not silent yet

    def unread() -> list[RankError]:
        raise AssertionError("errors/ read although no node is silent")

    assert stalls.find_lost_node(beats, now - 3, 9000.0, unread) is None  # nothing silent: errors/ not read
    # n2's ranks spoke (they died of the echo too): n1 only has silent ranks without a word
    assert stalls.find_lost_node(beats, now, 9000.0, lambda: [echo, RankError(1, "n2", "RuntimeError", "Connection reset "
                                                                     "by peer")]) is None
    run = RunDir.create(Path(tempfile.mkdtemp()), "job")
    run.add_event(Event.STARTED, t=now - 60)
    stalls.record_stall(run, found, 120)
    stalled = run.read_events()[-1]
    assert stalled["node_silent"] is True and stalled["rank"] == 1, stalled
    ending = attempts.record_end(run, 1, now - 60, 60.0, restart_on="infrastructure", max_restarts=3)
    assert "rank 1 (n2): Stalled: its node went silent at step 37 while another rank died of a lost peer" in \
        ending.summary, ending.summary


def test_a_rank_that_beats_without_its_first_step_is_named_after_the_first_step_timeout() -> None:
    """A resumed attempt whose rank restored its checkpoint (progress) and then never made its
    first step, still beating: e.g. a DataLoader worker whose fork deadlocked (CPython 3.11.7, a
    C thread holding the runtime's lock at the fork). Named after job.first_step_timeout_s, not
    job.stall_timeout_s (a first step may compile for many minutes), and never without a limit."""
    now = 10_000.0
    restored = beat(2, now - 1801, now - 1, stepped=False)
    assert stalls.find_stall([restored], now, since=8000.0, after_s=120) is None  # no first-step limit given
    assert stalls.find_stall([restored], now, since=8000.0, after_s=120, first_step_s=1900) is None  # compiling
    found = stalls.find_stall([beat(0, now - 5, now - 1), restored], now, since=8000.0, after_s=120, first_step_s=1800)
    assert found is not None and found.beat.rank == 2 and found.beating and found.before_first_step
    assert stalls.describe_stall(found) == ("rank 2 (n2) no progress for 1801 s (before its first step), since step 37; "
                                            "still beating (waiting)")
    # a rank past its first step keeps the shorter limit
    assert not stalls.find_stall([beat(0, now - 121, now - 1)], now, 8000.0, 120, 1800).before_first_step
    # a rank with no progress at all yet (data being prepared, downloads) is not watched
    unstarted = Heartbeat(rank=0, host="n0", step=0, progress_at=None, beat_at=now - 1)
    assert stalls.find_stall([unstarted], now, since=100.0, after_s=120, first_step_s=60) is None


def test_a_stall_before_the_first_step_names_its_own_timeout(run: RunDir) -> None:
    run.add_event(Event.STARTED)
    found = stalls.find_stall([beat(1, time.time() - 700, time.time() - 1, stepped=False)], time.time(),
                              since=time.time() - 800, after_s=120, first_step_s=600)
    assert "before its first step" in stalls.record_stall(run, found, 120, 600)
    stalled = run.read_events()[-1]
    assert stalled["timeout_s"] == 600 and stalled["before_first_step"] is True
    died(run, 1)
    record_end(run, -9, time.time() - 5, 700.0, "infrastructure", max_restarts=3)
    assert "(job.first_step_timeout_s = 600); stopped" in run.read_events()[-1]["cause"]


def test_a_stalled_attempt_ends_as_a_restartable_stall(run: RunDir) -> None:
    run.add_event(Event.STARTED)
    run.add_event(Event.STALLED, rank=1, host="n1", idle_s=121.0, step=37, timeout_s=120)
    died(run, 0)  # the supervisor's kill leaves every rank's marker: the stall is the cause
    ending = record_end(run, -9, time.time() - 5, 130.0, "infrastructure", max_restarts=3)
    assert ending.restarting
    restarted = run.read_events()[-1]
    assert restarted["kind"] == "infrastructure" and restarted["rank"] == 1
    assert restarted["cause"] == ("rank 1 (n1): Stalled: no progress for 121.0 s since step 37 "
                                  "(job.stall_timeout_s = 120); stopped")


def test_a_lost_node_is_the_cause_whatever_the_ranks_said(run: RunDir) -> None:
    run.add_event(Event.STARTED)
    run.add_event(Event.STALLED, rank=0, host="n0", idle_s=11.0, step=28, timeout_s=10)
    died(run, 1)  # on the lost node n1; rank 0 (n0) echoed it
    (run.errors / "rank-0.json").write_text(json.dumps({"rank": 0, "host": "n0", "type": "RuntimeError",
                                                        "message": "Connection reset by peer"}))
    (run.path / "progress.json").write_text(json.dumps({"global_step": 30}))
    ending = record_end(run, 137, time.time() - 5, 60.0, "infrastructure", max_restarts=3, lost_nodes=["n1"])
    restarted = run.read_events()[-1]
    assert ending.restarting and restarted["kind"] == "infrastructure" and restarted["rank"] == 1
    assert restarted["cause"] == "node n1 lost at step 30 (its slurmd does not answer); rank(s) 1 died with it"
    ending = record_end(run, 137, time.time() - 5, 60.0, "never", lost_nodes=["n1"])
    assert not ending.restarting and run.read_events()[-1]["error"].startswith("node n1 lost at step 30")


@pytest.mark.parametrize("squeue_says, event", [("PENDING", "requeued"), ("COMPLETING", "requeue_failed"),
                                                ("", "requeue_failed")])
def test_a_requeue_slurm_already_did_is_recorded_as_a_requeue(tmp_path, monkeypatch, squeue_says, event) -> None:
    """`scontrol requeue` fails (silently, as it does when SLURM requeued the job itself after a node
    failure) yet squeue shows the job back in the queue: that is a requeue, not requeue_failed with
    an empty error. SLURM's two answers are stand-ins here: making real SLURM requeue a job at the
    instant its batch script does is a race no test can order."""
    from launcher.entry.requeue import requeue_on_slurm

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "squeue").write_text(f"#!/bin/sh\nprintf '%s' '77|{squeue_says}|n1'\n")  # -o %i|%T|%N
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    run = RunDir.create(tmp_path / "runs", "job")
    handler = signal.getsignal(signal.SIGTERM)
    try:
        requeue_on_slurm(run, after_step=12)  # it ignores SIGTERM (the requeue's) while it records
    finally:
        signal.signal(signal.SIGTERM, handler)
    (last,) = [e for e in run.read_events() if e["event"] in ("requeued", "requeue_failed")]
    assert last["event"] == event and last["slurm_job_id"] == "77", last
    if event == "requeued":
        assert last["by_slurm"] == "PENDING" and last["after_step"] == 12
    else:
        assert last["error"].startswith("scontrol requeue exited 1, saying nothing"), last
        assert ("(job COMPLETING)" in last["error"]) == (squeue_says == "COMPLETING")


def test_a_lost_node_whose_replacement_job_is_refused_fails_with_the_resume_command(tmp_path, digits_job) -> None:
    """The end hook, as the batch script runs it, with stand-ins for SLURM's tools: the probe of the
    dead rank's node fails (srun), so the run goes on as a new job without it; sbatch refuses that
    job, and the run fails saying so instead of waiting as `pending` for nothing."""
    import subprocess
    import sys

    from launcher import config

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tools = {"srun": "echo 'srun: error: Task launch failed on node n2: Communication connection failure' >&2; exit 1",
             "sbatch": "echo 'sbatch: error: Batch job submission failed: Requested node configuration is not "
                       "available' >&2; exit 1",
             "squeue": "exit 0", "scontrol": "exit 1"}
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    cluster = tmp_path / "cluster.toml"
    cluster.write_text('[s]\nbackend = "slurm"\npartition = "p"\ngpus_per_node = 0\n')
    run = RunDir.create(tmp_path / "runs", "job")
    cfg = config.resolve(config.Request(job_file=str(digits_job()), cluster="s", cluster_file=str(cluster), nodes=2,
                                        procs=1))
    (run.path / "config.toml").write_text(config.dumps(config.finalize(cfg, run.path, run.run_id, str(digits_job()))))
    run.add_event(Event.STARTED, slurm_job_id="77", t=time.time() - 5)
    run.errors.mkdir(exist_ok=True)
    run.alive_marker(1).write_text(json.dumps({"rank": 1, "host": "n2", "pid": 1}))
    (run.path / "progress.json").write_text(json.dumps({"global_step": 40}))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77"}
    hook = subprocess.run([sys.executable, "-m", "launcher.entry.slurm_hooks", "ended", str(run.path), "137"],
                          env=env, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert hook.returncode == 0, hook.stderr
    assert "node(s) n2 do not answer: lost" in hook.stdout, hook.stdout
    events = {e["event"]: e for e in run.read_events()}
    assert events["restarted"]["cause"] == "node n2 lost at step 40 (its slurmd does not answer); rank(s) 1 died with it"
    assert "sbatch refused the job" in events["requeue_failed"]["error"], events["requeue_failed"]
    assert "but the job without the lost node was refused; continue with: launch resume " in events["failed"]["error"]
    assert "requeued" not in events


def test_a_requeue_slurm_made_unseen_is_recorded_when_the_job_starts_again(tmp_path: Path, monkeypatch) -> None:
    """The batch host itself failed: nothing recorded SLURM's requeue, so the job's next start does,
    from SLURM_RESTART_COUNT past its last start's; once, and never a requeue already recorded or
    another job's start (launch's replacement job starts at 0)."""
    from launcher.entry.slurm_hooks import note_unseen_slurm_requeue

    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    unseen, seen, other = (RunDir.create(tmp_path / name, "job") for name in ("unseen", "seen", "other"))
    for run, job in ((unseen, "77"), (seen, "77"), (other, "76")):
        run.add_event(Event.STARTED, slurm_job_id=job, slurm_restart_count=0, t=time.time() - 60)
    seen.add_event(Event.REQUEUED, slurm_job_id="77", by_slurm="COMPLETING")
    for run in (unseen, seen, other, unseen):
        note_unseen_slurm_requeue(run)
    requeues = [e for run in (unseen, seen, other) for e in run.read_events() if e["event"] == "requeued"]
    assert [(e["by_slurm"], e.get("seen_at_start", False)) for e in requeues] == [("REQUEUED", True), ("COMPLETING", False)]


def test_a_requeued_job_excludes_the_run_s_bad_nodes_only_while_its_partition_keeps_enough(tmp_path: Path,
                                                                                          monkeypatch) -> None:
    """entry/requeue.exclude_from_job against SLURM's answers (stand-in scontrol and sinfo that print
    what SLURM prints and log their calls): a 2-node job of a 3-node partition may lose one node,
    not two; nodes it excludes already are not added again."""
    from launcher.entry.requeue import exclude_from_job

    bin_dir, log = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    tools = {
        "scontrol": f'echo "$@" >> {log}\ncase "$1 $2" in\n'
                    '  "-o show") echo "JobId=5 JobName=x Partition=p NumNodes=2-2 ExcNodeList=$EXC Restarts=1";;\n'
                    '  "show hostnames") echo "$3" | tr "," "\\n" | grep -v "(null)";;\n'
                    '  "update JobId=5") exit 0;;\nesac',
        "sinfo": 'echo "n1,n2"\necho "n3"',
    }
    for name, body in tools.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("EXC", "(null)")
    assert exclude_from_job("5", ["n2"]) == ["n2"]  # 2 of 3 left
    assert exclude_from_job("5", ["n2", "n3"]) == []  # 1 left for a 2-node job: not excluded
    monkeypatch.setenv("EXC", "n2")
    assert exclude_from_job("5", ["n2"]) == []  # excluded already
    assert exclude_from_job("5", []) == []
    updates = [line for line in log.read_text().splitlines() if line.startswith("update")]
    assert updates == ["update JobId=5 ExcNodeList=n2"], updates
