"""A run's lifecycle: the state each event (events.py) implies, and its typed status.

`events.jsonl` is the run's own history; a backend probe (is the supervisor or the SLURM job
still there?) covers what the history cannot say, such as a run killed without a word. Every
event name is spelled in events.py, with its payload. `summarize` is pure: events + progress + probe in,
`RunStatus` out, so every state is unit-tested without processes. How an attempt ended and the
restart policy live in attempts.py; stalls (heartbeats) in stalls.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

from launcher.events import Event, EventRecord, Failed, Started, Trained, typed
from launcher.records import ProbeDetails, Progress, SlurmProbeDetails, probe_details
from launcher.rundir import RunDir

E = TypeVar("E", bound=EventRecord)


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
    details: ProbeDetails | None = None  # supervisor_pid, slurm_job_id, ...
    # What the scheduler says the run is doing now, where it can say: PENDING while SLURM has not
    # started the job (it may have requeued it itself), RUNNING once it has (before the batch
    # script could record it). Overrides the history's pending/running.
    scheduler_state: State | None = None

    def __post_init__(self) -> None:
        if isinstance(self.details, Mapping):  # a plain mapping (older callers): read it as its record
            object.__setattr__(self, "details", probe_details(self.details))


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
    details: ProbeDetails | None = None  # the backend's probe
    note: str | None = None  # what the user should know that is not an error (a signal that came too late)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def over(self) -> bool:
        """Ended, one way or another (also `unknown`: nothing will change it)."""
        return self.terminal or self.state not in ACTIVE_STATES

    @property
    def slurm(self) -> SlurmProbeDetails:
        """The SLURM probe's details (empty for a run on another backend)."""
        return self.details if isinstance(self.details, SlurmProbeDetails) else SlurmProbeDetails()

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
        out.update(self.details.to_json() if self.details else {})
        return out


def summarize(events: Sequence[Mapping[str, Any] | EventRecord], progress: Mapping[str, Any] | Progress,
              probe: Probe, *, run_id: str, job: str, run_dir: str, backend: str) -> RunStatus:
    """A run's status from its history and one backend probe.

    The state is the one implied by the last lifecycle event; a run whose history says pending or
    running but whose supervisor or job is gone takes the backend's explanation (`ended_as`). The
    step and metrics come from rank zero's final `trained` record, else from `progress.json`.
    """
    history = typed(events)
    at = progress if isinstance(progress, Progress) else Progress.from_json(progress)
    state, times, restarts = State.UNKNOWN, {}, -1
    failed: Failed | None = None
    for ev in history:
        if ev.event in STATE_OF_EVENT:
            state = STATE_OF_EVENT[Event(ev.event)]
            times[ev.event] = ev.time
        if isinstance(ev, Started):
            restarts += 1
        if isinstance(ev, Failed):
            failed = ev
    error = failed.error if failed else None
    if state in ACTIVE_STATES and not probe.alive and probe.ended_as is not None:
        state, why = probe.ended_as
        error = error or why
    elif state in ACTIVE_STATES and probe.alive and probe.scheduler_state is not None:
        state = probe.scheduler_state
    trained = last_event(history, Trained)
    return RunStatus(
        run_id=run_id, job=job, run_dir=run_dir, backend=backend, state=state,
        global_step=trained.global_step if trained else at.global_step, epoch=trained.epoch if trained else at.epoch,
        restarts=max(restarts, 0), world_size=at.world_size,
        metrics=dict((trained.metrics if trained else None) or at.metrics),
        error=error, exit_code=failed.exit_code if failed else None, failed_rank=failed.rank if failed else None,
        times=times, details=probe.details, note=trained.note if trained else None,
    )


def status_of(run: RunDir, probe: Probe, backend: str) -> RunStatus:
    """`summarize` over the run directory's own files."""
    return summarize(run.history(), Progress.read(run.progress) or Progress(), probe, run_id=run.run_id,
                     job=run.job_name, run_dir=str(run.path), backend=backend)


def last_event(events: Sequence[Mapping[str, Any] | EventRecord], kind: type[E]) -> E | None:
    """The newest event of this kind (an events.py class)."""
    return next((ev for ev in reversed(typed(events)) if isinstance(ev, kind)), None)


def this_attempt(events: Sequence[Mapping[str, Any] | EventRecord]) -> list[EventRecord]:
    """The events since the last `started` (the current or last attempt)."""
    history = typed(events)
    last_start = max((i for i, e in enumerate(history) if isinstance(e, Started)), default=-1)
    return history[last_start + 1:]


def starts(events: Sequence[Mapping[str, Any] | EventRecord]) -> int:
    """How many attempts have started: before a new `started`, the run's restarts so far (what
    `launch status` counts), whichever job, step or process started them."""
    return sum(isinstance(e, Started) for e in typed(events))


def names(events: Sequence[Mapping[str, Any] | EventRecord]) -> list[str]:
    return [e.event for e in typed(events)]
