"""A run's lifecycle: the events it records, the state each implies, and its typed status.

`events.jsonl` is the run's own history; a backend probe (is the supervisor or the SLURM job
still there?) covers what the history cannot say, such as a run killed without a word. Every
event name is spelled here and only here. `summarize` is pure: events + progress + probe in,
`RunStatus` out, so every state and every failure-naming rule is unit-tested without processes.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from launcher.rundir import RunDir


class Event(StrEnum):
    """The records of `events.jsonl` (a StrEnum: written and compared as the plain string)."""

    SUBMITTED = "submitted"  # the CLI made the run directory
    QUEUED = "queued"  # sbatch accepted the job (SLURM)
    STARTED = "started"  # an attempt began (supervisor or batch script)
    TRAINING_STARTED = "training_started"  # rank zero built the Trainer
    FIRST_STEP = "first_step"  # the attempt's first optimizer step ended
    PREEMPTED = "preempted"  # every rank agreed to stop; the checkpoint is saved
    REQUEUED = "requeued"  # the run is queued again after a preemption
    REQUEUE_FAILED = "requeue_failed"  # `scontrol requeue` refused
    RESTARTED = "restarted"  # an attempt failed and the run restarts by itself (job.restart_on)
    STALLED = "stalled"  # a rank made no progress for job.stall_timeout_s: the supervisor stops the attempt
    RESUMED = "resumed"  # an attempt restored a checkpoint
    TRAINED = "trained"  # fit (and test) ended on rank zero
    FINISHED = "finished"  # the attempt ended and training completed
    FAILED = "failed"  # the attempt ended without completing
    CANCEL_REQUESTED = "cancel_requested"  # launch cancel asked SLURM to stop the job
    CANCELLED = "cancelled"  # a person stopped the run
    RESUME_REQUESTED = "resume_requested"  # launch resume handed the run to its backend again
    PREDICTED = "predicted"  # launch predict wrote predictions
    EXPORTED = "exported"  # launch export wrote a consolidated checkpoint
    TUNED = "tuned"  # launch tune wrote a tuned job file


class State(StrEnum):
    """What `launch status` says a run is."""

    UNKNOWN = "unknown"  # no lifecycle event recorded (a run directory made by hand, or torn)
    PENDING = "pending"  # submitted, queued, requeued or resumed, not started yet
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


# The state each lifecycle event leaves a run in; events not listed leave the state as it was.
STATE_OF_EVENT: Mapping[Event, State] = {
    Event.SUBMITTED: State.PENDING,
    Event.QUEUED: State.PENDING,
    Event.STARTED: State.RUNNING,
    Event.RESUME_REQUESTED: State.PENDING,
    Event.REQUEUED: State.PENDING,
    Event.RESTARTED: State.PENDING,
    Event.FINISHED: State.COMPLETED,
    Event.FAILED: State.FAILED,
    Event.CANCELLED: State.CANCELLED,
}
TERMINAL_STATES = (State.COMPLETED, State.FAILED, State.CANCELLED)
ACTIVE_STATES = (State.PENDING, State.RUNNING)


@dataclass(frozen=True)
class Probe:
    """One look at the backend: whether the run's supervisor or job is still there, what the
    backend would call a run that vanished without recording its end, and what status shows."""

    alive: bool
    ended_as: tuple[State, str] | None = None  # (state, why), for a run gone without its end
    details: Mapping[str, Any] = field(default_factory=dict)  # supervisor_pid, slurm_job_id, ...
    # What the scheduler says the run is doing now, where it can say: PENDING while SLURM has not
    # started the job (it may have requeued it itself), RUNNING once it has (before the batch
    # script could record it). Overrides the history's pending/running.
    scheduler_state: State | None = None


@dataclass(frozen=True)
class RunStatus:
    """Everything `launch status` shows of a run."""

    run_id: str
    job: str
    run_dir: str
    backend: str
    state: State
    global_step: int = 0
    epoch: int = 0
    restarts: int = 0
    world_size: int | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None
    exit_code: int | None = None
    failed_rank: int | None = None
    times: Mapping[str, str] = field(default_factory=dict)  # lifecycle event -> when it last happened
    details: Mapping[str, Any] = field(default_factory=dict)  # the backend's probe
    note: str | None = None  # what the user should know that is not an error (a signal that came too late)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def over(self) -> bool:
        """Ended, one way or another (also `unknown`: nothing will change it)."""
        return self.terminal or self.state not in ACTIVE_STATES

    @property
    def submitted_at(self) -> str | None:
        return self.times.get(Event.SUBMITTED)

    def as_dict(self) -> dict[str, Any]:
        """The `launch status --json` view: flat, with `<event>_at` times and the probe's details."""
        out: dict[str, Any] = {
            "run_id": self.run_id, "job": self.job, "run_dir": self.run_dir, "state": str(self.state),
            "terminal": self.terminal, "global_step": self.global_step, "epoch": self.epoch,
            "restarts": self.restarts, "world_size": self.world_size, "metrics": dict(self.metrics),
            "error": self.error, "exit_code": self.exit_code, "failed_rank": self.failed_rank,
            "backend": self.backend, "note": self.note,
        }
        out.update({f"{event}_at": when for event, when in self.times.items()})
        out.update(self.details)
        return out


def summarize(events: Sequence[Mapping[str, Any]], progress: Mapping[str, Any], probe: Probe, *,
              run_id: str, job: str, run_dir: str, backend: str) -> RunStatus:
    """A run's status from its history and one backend probe.

    The state is the one implied by the last lifecycle event; a run whose history says pending or
    running but whose supervisor or job is gone takes the backend's explanation (`ended_as`). The
    step and metrics come from rank zero's final `trained` record, else from `progress.json`.
    """
    state, times, restarts = State.UNKNOWN, {}, -1
    error = exit_code = failed_rank = None
    for ev in events:
        name = ev.get("event")
        if name in STATE_OF_EVENT:
            state = STATE_OF_EVENT[Event(name)]
            times[str(name)] = ev.get("time")
        if name == Event.STARTED:
            restarts += 1
        if name == Event.FAILED:
            error, exit_code, failed_rank = ev.get("error"), ev.get("exit_code"), ev.get("rank")
    if state in ACTIVE_STATES and not probe.alive and probe.ended_as is not None:
        state, why = probe.ended_as
        error = error or why
    elif state in ACTIVE_STATES and probe.alive and probe.scheduler_state is not None:
        state = probe.scheduler_state
    trained = last_event(events, Event.TRAINED)
    position = trained or progress
    return RunStatus(
        run_id=run_id, job=job, run_dir=run_dir, backend=backend, state=state,
        global_step=position.get("global_step", 0), epoch=position.get("epoch", 0),
        restarts=max(restarts, 0), world_size=progress.get("world_size"),
        metrics=(trained or {}).get("metrics") or progress.get("metrics", {}),
        error=error, exit_code=exit_code, failed_rank=failed_rank, times=times, details=probe.details,
        note=(trained or {}).get("note"),
    )


def status_of(run: RunDir, probe: Probe, backend: str) -> RunStatus:
    """`summarize` over the run directory's own files."""
    return summarize(run.read_events(), run.read_progress(), probe, run_id=run.run_id, job=run.job_name,
                     run_dir=str(run.path), backend=backend)


def last_event(events: Sequence[Mapping[str, Any]], name: Event) -> Mapping[str, Any] | None:
    return next((ev for ev in reversed(events) if ev.get("event") == name), None)


def this_attempt(events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The events since the last `started` (the current or last attempt)."""
    last_start = max((i for i, e in enumerate(events) if e.get("event") == Event.STARTED), default=-1)
    return list(events[last_start + 1:])


def names(events: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(e.get("event")) for e in events]


# --------------------------------------------------------------------------- how an attempt ended

# A rank that fails in a collective because another rank died or hung: an echo, not the cause.
ECHO = re.compile(r"Connection closed by peer|Connection reset by peer|Broken pipe|[Tt]imed out|timeout|"
                  r"NCCL communicator was aborted|ProcessGroup.*abort|Gloo connectFullMesh failed")
# An echo that says the rank waited job.collective_timeout_s for the others and gave up. gloo words
# it "Timed out waiting Nms for recv" or, on a pair an earlier timeout closed, "Application timeout
# caused pair closure"; NCCL's watchdog "... ran for N milliseconds before timing out".
COLLECTIVE_TIMEOUT = re.compile(r"[Tt]imed out|[Tt]imeout|timing out")


def first_error(run: RunDir, since: float) -> dict[str, Any] | None:
    """The cause of this attempt's failure, from the ranks' own records.

    In order: the earliest Python error that is not an echo of another rank's failure; then the
    ranks that died without a word (their alive marker is still there: killed, out of memory,
    crashed in native code, or hung and stopped); then the earliest echo.
    """
    errors = []
    for path in run.errors.glob("rank-*.json"):
        try:
            mtime = path.stat().st_mtime
            if mtime + 1 >= since:
                errors.append((mtime, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            continue
    dead = dead_ranks(run, since)
    errors.sort(key=lambda r: r[0])
    causes = [e for _, e in errors if not ECHO.search(f"{e.get('type')}: {e.get('message')}")]
    if causes:
        return causes[0]
    if dead:
        dead.sort(key=lambda d: d["rank"])
        first = dead[0]
        others = f" (also ranks {', '.join(str(d['rank']) for d in dead[1:])})" if len(dead) > 1 else ""
        echo = f"; then rank {errors[0][1]['rank']}: {errors[0][1]['type']}: {errors[0][1]['message'][:160]}" if errors else ""
        timed_out = [e for _, e in errors if COLLECTIVE_TIMEOUT.search(f"{e.get('type')}: {e.get('message')}")]
        if timed_out:
            return {"rank": first["rank"], "host": first.get("host", "?"), "type": "Hung",
                    "message": f"stopped responding: rank {timed_out[0]['rank']} waited job.collective_timeout_s for "
                               "it in a collective and gave up, then it was stopped (a hang in its code or data, or "
                               f"its node was lost); its stack is in logs/rank-{first['rank']}.log{others}{echo}"}
        return {"rank": first["rank"], "host": first.get("host", "?"), "type": "Died",
                "message": "ended without a Python error: killed by a signal (or out of memory), crashed in "
                           f"native code, or hung and was stopped; see logs/rank-{first['rank']}.log{others}{echo}"}
    return errors[0][1] if errors else None


def dead_ranks(run: RunDir, since: float) -> list[dict[str, Any]]:
    """The alive markers ({rank, host, pid}) of this attempt's ranks that ended without a Python
    error: killed, crashed in native code, or on a node that died."""
    dead = []
    for path in run.errors.glob("rank-*.alive"):
        try:
            if path.stat().st_mtime + 1 >= since:
                dead.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return dead


# Failures of the machinery rather than of the job's code: what job.restart_on = "infrastructure" retries.
INFRASTRUCTURE = {"Died", "Hung", "Stalled", "NodeLost"}
INFRASTRUCTURE_ERROR = re.compile(r"NCCL|[Gg]loo|DistBackendError|DistNetworkError|ProcessGroup|[Cc]onnection (reset|"
                                  r"closed|refused)|Broken pipe|[Tt]imed out|out of memory|CUDA error|ECC")


def failure_kind(err: Mapping[str, Any] | None) -> str:
    """"infrastructure" or "code": what a failed attempt's first error says about retrying it."""
    if err is None:  # the ranks exited non-zero without a word: killed from outside
        return "infrastructure"
    text = f"{err.get('type')}: {err.get('message')}"
    return "infrastructure" if err.get("type") in INFRASTRUCTURE or INFRASTRUCTURE_ERROR.search(text) else "code"


@dataclass(frozen=True)
class Ending:
    """How an attempt ended: finished, restarting (job.restart_on), or failed; and a line saying so."""

    finished: bool
    restarting: bool
    summary: str


def record_end(run: RunDir, exit_code: int, started_at: float, elapsed_s: float,
               restart_on: str = "never", max_restarts: int = 0, lost_nodes: Sequence[str] = ()) -> Ending:
    """Append `finished`, `restarted` or `failed` for an attempt whose ranks exited with `exit_code`.

    Finished means the ranks exited 0 AND rank zero recorded that training completed. A failure
    the restart policy covers, with restarts left, is `restarted` (the caller starts the run
    again; it resumes from its newest complete checkpoint); otherwise `failed`, listing the causes
    of the earlier restarts too. `lost_nodes` (nodes that no longer answer, found by the SLURM end
    hook) are the cause whatever the ranks said: their ranks died with them, the others echoed it.
    """
    events = run.read_events()
    last = last_event(events, Event.TRAINED)
    if exit_code == 0 and last is not None and not last.get("interrupted"):
        run.add_event(Event.FINISHED, elapsed_s=elapsed_s, global_step=last.get("global_step"))
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(last.get("metrics", {}).items()))
        return Ending(True, False, f"completed in {elapsed_s} s: step {last.get('global_step')}, {shown}")
    err = first_error(run, started_at)
    stalled = last_event(this_attempt(events), Event.STALLED)
    if stalled is not None:  # the supervisor stopped it: that is the cause, whatever the ranks said then
        err = {"rank": stalled.get("rank"), "host": stalled.get("host", "?"), "type": "Stalled",
               "message": f"no progress for {stalled.get('idle_s')} s since step {stalled.get('step')} "
                          f"(job.stall_timeout_s = {stalled.get('timeout_s')}); stopped"}
    if lost_nodes:
        on_them = sorted(int(d["rank"]) for d in dead_ranks(run, started_at) if d.get("host") in lost_nodes)
        err = {"rank": on_them[0] if on_them else None, "host": ",".join(lost_nodes), "type": "NodeLost",
               "message": f"node {', '.join(lost_nodes)} lost at step {run.read_progress().get('global_step', '?')} "
                          "(its slurmd does not answer)"
                          + (f"; rank(s) {', '.join(map(str, on_them))} died with it" if on_them else "")}
    if err and err["type"] == "NodeLost":
        message = err["message"]
    elif err:
        message = f"rank {err['rank']} ({err.get('host', '?')}): {err['type']}: {err['message']}"
    elif exit_code == 0:
        message = "the ranks exited without completing training"
    else:
        message = f"the ranks exited with {exit_code}; see {run.logs}"
    earlier = [e for e in events if e.get("event") == Event.RESTARTED]
    kind = failure_kind(err) if (err or exit_code) else "code"
    reached = run.read_progress().get("global_step")  # how far this attempt got (the ledger's recomputed steps)
    if restart_on != "never" and (restart_on == "any" or kind == "infrastructure") and len(earlier) < max_restarts:
        run.add_event(Event.RESTARTED, restart=len(earlier) + 1, cause=message, kind=kind, exit_code=exit_code,
                      rank=err["rank"] if err else None, elapsed_s=elapsed_s, step_reached=reached)
        return Ending(False, True, f"failed after {elapsed_s} s ({message}): restart {len(earlier) + 1} of "
                                   f"{max_restarts} (job.restart_on = {restart_on!r})")
    if earlier:
        message += f"; after {len(earlier)} restart(s): " + "; ".join(e.get("cause", "?")[:200] for e in earlier)
    run.add_event(Event.FAILED, elapsed_s=elapsed_s, exit_code=exit_code or 1,
                  rank=err["rank"] if err else None, error=message, step_reached=reached)
    return Ending(False, False, f"failed after {elapsed_s} s: {message}")


def requeue_fields(preempted: Mapping[str, Any]) -> dict[str, Any]:
    """What a `requeued` event records of the preemption it follows: the step saved, and the time
    from the signal to the attempt's exit (what `grace_warning` compares with the grace)."""
    signal_at = preempted.get("signal_at")
    return {"after_step": preempted.get("step"),
            "signal_to_exit_s": round(time.time() - signal_at, 3) if signal_at else None}


def grace_warning(events: Sequence[Mapping[str, Any]], grace_s: int) -> str | None:
    """A warning when the last preemption took more than half the grace (signal to exit, saving
    included): the next one may not fit, and a save cut short by SIGKILL is lost work."""
    last = last_event(events, Event.REQUEUED)
    used = (last or {}).get("signal_to_exit_s")
    if used is None or used <= grace_s / 2:
        return None
    return (f"the last preemption took {used:.0f} s from the signal to the exit, more than half of the "
            f"{grace_s} s grace (cluster.signal_grace_s): raise the grace, or make the checkpoint smaller or faster")


HEARTBEAT_S = 5.0  # how often every rank rewrites heartbeats/rank-N.json
STALL_REPORT_S = 30.0  # launch status calls a rank stalled after this long without progress (or 3 slow steps)


def stall(beats: Sequence[Mapping[str, Any]], now: float, since: float, after_s: float = STALL_REPORT_S
          ) -> dict[str, Any] | None:
    """The stalled rank of a running attempt, from its heartbeats (only those written since
    `since`, the attempt's start): a rank without progress for `after_s` (or three of the run's
    slowest steps), if it is past its first step or has stopped beating. A rank that stopped
    beating is named before a rank that beats but waits (for it, usually)."""
    current = [b for b in beats if float(b.get("beat_at", 0)) >= since]
    # One limit for every rank (its slowest step is the run's): a stopped rank and the ranks waiting
    # for it go quiet together, and the one that stopped beating is the one to name.
    limit = max([after_s] + [3 * float(b.get("slowest_step_s", 0)) for b in current])
    stuck = []
    for beat in current:
        idle, silent = now - float(beat.get("progress_at", now)), now - float(beat["beat_at"])
        beating = silent < 1.5 * HEARTBEAT_S
        # A beating rank is watched from its first step (a first step may compile for minutes); a
        # silent one (stopped, killed, its node lost) whenever it stopped.
        if idle >= limit and (beat.get("stepped") or not beating):
            stuck.append({**beat, "idle_s": round(idle, 1), "silent_s": round(silent, 1), "beating": beating})
    if not stuck:
        return None
    return sorted(stuck, key=lambda b: (b["beating"], -b["idle_s"], b.get("rank", 0)))[0]


def describe_stall(found: Mapping[str, Any]) -> str:
    heard = "still beating (waiting)" if found["beating"] else f"no heartbeat for {found['silent_s']:.0f} s"
    return (f"rank {found.get('rank')} ({found.get('host', '?')}) no progress for {found['idle_s']:.0f} s, "
            f"since step {found.get('step')}; {heard}")


def record_not_requeued(run: RunDir, exit_code: int) -> str:
    """A preempted attempt that could not go back in the queue: failed, with the command that
    continues it."""
    message = f"preempted and saved, but not requeued; continue it with: launch resume {run.path}"
    run.add_event(Event.FAILED, exit_code=exit_code or 1, rank=None, error=message)
    return message
