"""The events of `events.jsonl` as typed records: one frozen dataclass per event, its payload's
fields named and typed.

Writers append plain keyword fields (`RunDir.add_event`: the JSON on disk is what it always was);
readers in launch take `RunDir.history()`, a list of these records, and use fields, never string
keys (tests/test_layout.py looks for them). `parse` is tolerant as `Record.from_json` is: a key it
does not know is ignored, a missing one takes the field's default, an event it does not know
reads as a plain `EventRecord`; so older run directories read, and so do newer ones.

Every event carries `event`, `time` (ISO, to the second) and usually `t` (seconds, to the
millisecond); `slurm_job_id` is on the events a SLURM job's scripts record.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from launcher.records import Record


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
    CHECKPOINT_INTERVAL = "checkpoint_interval"  # rank zero chose the periodic checkpoint's interval (auto)
    STRAGGLER = "straggler"  # a rank's step compute is above the others' by job.straggler_factor (first sighting)
    BAD_NODE = "bad_node"  # a node failed the run (lost, a pre-flight check): later SLURM jobs of the run exclude it


@dataclass(frozen=True, kw_only=True)
class EventRecord(Record):
    """One line of events.jsonl: its name, when it was written, and the job that wrote it (SLURM)."""

    event: str = ""
    time: str = ""
    t: float | None = None
    slurm_job_id: str | None = None

    @property
    def at(self) -> float | None:
        """When it happened, in seconds: `t`, else the ISO `time` (to the second)."""
        if isinstance(self.t, int | float):
            return float(self.t)
        try:
            return dt.datetime.fromisoformat(self.time).timestamp()
        except (TypeError, ValueError):
            return None


@dataclass(frozen=True, kw_only=True)
class Dependency(Record):
    """One `--after RUN[:when]` a run was submitted with."""

    run_dir: str
    run_id: str = ""
    when: str = "ok"  # "ok" or "any"


@dataclass(frozen=True, kw_only=True)
class Submitted(EventRecord):
    backend: str = ""
    profile: str = ""
    world_size: int | None = None
    code: Mapping[str, Any] | None = None  # the code snapshot: {"packages": [...], "files": N}
    here: str | None = None  # launch submit --here: the allocation's job id
    after: Sequence[Mapping[str, Any]] = ()  # Dependency records
    sweep: str | None = None
    point: Mapping[str, Any] | None = None

    @property
    def dependencies(self) -> list[Dependency]:
        return [Dependency.from_json(a) for a in self.after]


@dataclass(frozen=True, kw_only=True)
class Queued(EventRecord):
    excluded_nodes: Sequence[str] = ()
    exclusion_refused: str | None = None  # sbatch refused the exclusions (too few nodes left): queued without them


@dataclass(frozen=True, kw_only=True)
class Started(EventRecord):
    backend: str = ""
    pid: int | None = None
    host: str = "?"
    attempt: int | None = None
    restart_count: int | None = None  # the run's restarts before this attempt (requeues, restarts, resumes)
    slurm_restart_count: int | None = None  # SLURM_RESTART_COUNT: this SLURM job's own requeues


@dataclass(frozen=True, kw_only=True)
class TrainingStarted(EventRecord):
    world_size: int | None = None
    resume_from: str | None = None
    lightning: str | None = None  # the Lightning namespace the ranks run ("lightning.pytorch", "pytorch_lightning")
    lightning_loaded: list[str] | None = None  # every Lightning namespace imported in rank zero (that one alone)
    # rank zero guards its forks against CPython 3.11's child deadlock (gh-112275; runtime/cpython_compat.py);
    # False: a Python that needs no guard, or a layout the guard does not know
    fork_guard: bool | None = None


@dataclass(frozen=True, kw_only=True)
class FirstStep(EventRecord):
    global_step: int = 0


@dataclass(frozen=True, kw_only=True)
class Preempted(EventRecord):
    """Where every rank stopped, and how the save went (records.Preemption's fields)."""

    step: int | None = None
    epoch: int = 0
    batch_in_epoch: int = 0
    signal: str = ""
    signal_at: float | None = None
    signal_to_saved_s: float | None = None
    save_s: float | None = None
    checkpoint_bytes: int | None = None


@dataclass(frozen=True, kw_only=True)
class Requeued(EventRecord):
    after_step: int | None = None
    signal_to_exit_s: float | None = None  # from the preemption's signal to the attempt's exit
    in_allocation: bool = False  # restarted inside the same allocation (--here, a restart_on failure)
    by_slurm: str | None = None  # SLURM put the job back itself (its squeue state)
    new_slurm_job_id: str | None = None  # a replacement job (a lost node)
    lost_nodes: Sequence[str] = ()
    start_after_s: float | None = None  # the shortened post-requeue hold
    seen_at_start: bool = False  # a requeue by SLURM nobody saw happen: noticed when the job started again
    excluded_nodes: Sequence[str] = ()  # bad nodes added to the requeued job's ExcNodeList


@dataclass(frozen=True, kw_only=True)
class RequeueFailed(EventRecord):
    error: str = ""


@dataclass(frozen=True, kw_only=True)
class Restarted(EventRecord):
    restart: int = 0
    cause: str = "?"
    kind: str = ""  # attempts.failure_kind: "infrastructure" or "code"
    exit_code: int | None = None
    rank: int | None = None
    error_type: str | None = None  # the cause's type (Hung, Died, Stalled, ValueError...): restart loops
    elapsed_s: float | None = None
    step_reached: int | None = None  # how far the failed attempt got (the ledger's recomputed steps)


@dataclass(frozen=True, kw_only=True)
class Stalled(EventRecord):
    rank: int | None = None
    host: str = "?"
    idle_s: float | None = None
    step: int | None = None
    timeout_s: float | None = None
    before_first_step: bool = False  # then timeout_s is job.first_step_timeout_s
    node_silent: bool = False  # its node went silent after another rank died of a lost peer: not timed out


@dataclass(frozen=True, kw_only=True)
class Resumed(EventRecord):
    global_step: int | None = None
    epoch: int = 0
    mid_epoch: bool = False
    checkpoint: str | None = None
    history_kept_to_step: int | None = None  # a crash's logged steps past the checkpoint were dropped
    csv_rows_dropped: int | None = None


@dataclass(frozen=True, kw_only=True)
class Trained(EventRecord):
    global_step: int = 0
    epoch: int = 0
    interrupted: bool = False
    metrics: Mapping[str, float] = field(default_factory=dict)
    note: str | None = None


@dataclass(frozen=True, kw_only=True)
class Finished(EventRecord):
    elapsed_s: float | None = None  # the whole run: from its submission, every attempt and wait between
    global_step: int | None = None
    attempt_s: float | None = None  # the last attempt alone
    attempts: int | None = None


@dataclass(frozen=True, kw_only=True)
class Failed(EventRecord):
    elapsed_s: float | None = None
    exit_code: int | None = None
    rank: int | None = None
    error: str | None = None
    step_reached: int | None = None


@dataclass(frozen=True, kw_only=True)
class CancelRequested(EventRecord):
    pass


@dataclass(frozen=True, kw_only=True)
class Cancelled(EventRecord):
    elapsed_s: float | None = None
    completing_on_lost_nodes: Sequence[str] = ()


@dataclass(frozen=True, kw_only=True)
class ResumeRequested(EventRecord):
    previous_state: str | None = None
    code: str | None = None  # "current" (the submit directory's code) or "snapshot"
    code_changed: Sequence[str] = ()
    world_size: int | None = None  # a new shape (launch resume --nodes/--procs)
    world_size_before: int | None = None


@dataclass(frozen=True, kw_only=True)
class Predicted(EventRecord):
    checkpoint: str = ""
    output: str = ""
    count: int = 0


@dataclass(frozen=True, kw_only=True)
class Exported(EventRecord):
    checkpoint: str = ""
    output: str = ""
    tensors: int = 0
    parameters: int = 0


@dataclass(frozen=True, kw_only=True)
class Tuned(EventRecord):
    lr: float | None = None
    lr_key: str | None = None
    batch_size: int | None = None


@dataclass(frozen=True, kw_only=True)
class CheckpointInterval(EventRecord):
    every_s: float = 0.0
    save_s: float | None = None  # what a periodic save blocked training (rank zero, timed)
    why: str = ""


@dataclass(frozen=True, kw_only=True)
class Straggler(EventRecord):
    rank: int | None = None
    host: str = "?"
    step: int | None = None
    factor: float = 0.0  # its step compute over the other ranks' median
    compute_s: float | None = None
    median_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class BadNode(EventRecord):
    host: str = ""
    reason: str = ""  # "lost" or what failed ("pre-flight: ...")


PAYLOADS: Mapping[str, type[EventRecord]] = {
    Event.SUBMITTED: Submitted, Event.QUEUED: Queued, Event.STARTED: Started,
    Event.TRAINING_STARTED: TrainingStarted, Event.FIRST_STEP: FirstStep, Event.PREEMPTED: Preempted,
    Event.REQUEUED: Requeued, Event.REQUEUE_FAILED: RequeueFailed, Event.RESTARTED: Restarted,
    Event.STALLED: Stalled, Event.RESUMED: Resumed, Event.TRAINED: Trained, Event.FINISHED: Finished,
    Event.FAILED: Failed, Event.CANCEL_REQUESTED: CancelRequested, Event.CANCELLED: Cancelled,
    Event.RESUME_REQUESTED: ResumeRequested, Event.PREDICTED: Predicted, Event.EXPORTED: Exported,
    Event.TUNED: Tuned, Event.CHECKPOINT_INTERVAL: CheckpointInterval, Event.STRAGGLER: Straggler,
    Event.BAD_NODE: BadNode,
}
assert set(PAYLOADS) == set(Event), "every event has its payload class"


def parse(raw: Mapping[str, Any] | EventRecord) -> EventRecord:
    """The typed record of one event (a record is returned as it is)."""
    if isinstance(raw, EventRecord):
        return raw
    return PAYLOADS.get(str(raw.get("event")), EventRecord).from_json(raw)


def typed(events: Iterable[Mapping[str, Any] | EventRecord]) -> list[EventRecord]:
    return [parse(e) for e in events]


def unknown_keys(raw: Mapping[str, Any]) -> set[str]:
    """The keys of a written event its class does not name (tests: every writer's fields are typed)."""
    cls = PAYLOADS.get(str(raw.get("event")), EventRecord)
    return set(raw) - {f.name for f in cls.__dataclass_fields__.values()}
