"""The typed records one process writes and another reads, apart from events.jsonl's events.

Each is a frozen dataclass with `to_json` (the JSON object on disk, unchanged from the dicts the
files held before these types existed) and `from_json` (tolerant: keys it does not know are
ignored, missing ones take the field's default, so older run directories still read). Readers
use the fields, never string keys (tests/test_layout.py looks for them).

| record | file | writer | readers |
| --- | --- | --- | --- |
| RankError | errors/rank-N.json | a failing rank (runtime/rank.py) | attempts.first_error |
| AliveMarker | errors/rank-N.alive | every rank, removed on a clean exit | attempts.dead_ranks |
| Heartbeat | heartbeats/node-K.json (a list), rank-N.json | every rank, through its node's leader | stalls, stragglers |
| Plan | plan.json | the local backend | entry/supervisor.py |
| SlurmJob | slurm.json | the SLURM backend, entry/requeue.py | backends/slurm.py |
| Preemption | the `preempted` event's payload | rank zero (runtime/preemption.py) | (events.Preempted reads it) |
| Progress | progress.json | rank zero (runtime/progress.py) | lifecycle.summarize, attempts |
| Local/SlurmProbeDetails | (in memory) what a backend's probe saw | backends/ | status --json, cli, dependencies |
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self


class Record:
    """Shared JSON conversion of the records below."""

    # Fields written only when set (the files never held them as null or false).
    OPTIONAL: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def read(cls, path: Path) -> Self | None:
        """The record in `path`, or None if it is missing or torn."""
        try:
            data = json.loads(path.read_text())
            return cls.from_json(data) if isinstance(data, dict) else None
        except (OSError, json.JSONDecodeError, TypeError):  # TypeError: a required field is missing
            return None

    @classmethod
    def read_list(cls, path: Path) -> list[Self]:
        """The records in `path`, a list of them or one; none if it is missing or torn."""
        try:
            data = json.loads(path.read_text())
            return [cls.from_json(item) for item in (data if isinstance(data, list) else [data]) if isinstance(item, dict)]
        except (OSError, json.JSONDecodeError, TypeError):
            return []

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        for name in self.OPTIONAL:
            if out.get(name) in (None, False):
                out.pop(name, None)
        return out

    def dumps(self, indent: int | None = None) -> str:
        return json.dumps(self.to_json(), indent=indent)


@dataclass(frozen=True)
class RankError(Record):
    """A rank's Python failure (errors/rank-N.json), or the cause an attempt's end names."""

    rank: int | None = None
    host: str = "?"
    type: str = ""
    message: str = ""
    traceback: str = ""

    OPTIONAL = ("traceback",)

    @property
    def text(self) -> str:
        return f"{self.type}: {self.message}"


@dataclass(frozen=True)
class AliveMarker(Record):
    """errors/rank-N.alive: present while the rank runs; left behind only by a rank that died
    without a Python error (SIGKILL, out of memory, a native crash, a lost node)."""

    rank: int
    host: str = "?"
    pid: int | None = None


@dataclass(frozen=True)
class Heartbeat(Record):
    """A rank's last progress and last beat (runtime/heartbeat.py), in its node's heartbeats/node-K.json
    (runtime/beat_channel.py) or its own heartbeats/rank-N.json."""

    rank: int = 0
    host: str = "?"
    step: int = 0
    progress_at: float | None = None  # the last batch done (training, validation or test)
    slowest_step_s: float = 0.0
    beat_at: float = 0.0  # the beat itself: a rank whose loop is stuck keeps beating
    slurm_step: str | None = None  # JOB.STEP, what a stall stops on SLURM
    stepped: bool = False  # past its first training step (a first step may compile for minutes)
    done: bool = False  # its training (and test) is over: what remains (records, plots, exit) is not watched
    # the median, over its last training steps, of its own compute per step (its wait for the other
    # ranks' gradients left out): what names a straggler (launcher/stragglers.py)
    compute_s: float | None = None
    pid: int | None = None  # the rank's process (its node's leader waits for it at the end: runtime/beat_channel.py)

    OPTIONAL = ("slurm_step", "stepped", "done", "compute_s", "pid")


@dataclass(frozen=True)
class StalledRank:
    """A rank `stalls.find_stall` names: its heartbeat and how long it has been quiet."""

    beat: Heartbeat
    idle_s: float  # since its last progress
    silent_s: float  # since its last beat
    beating: bool  # still beating (waiting, usually for the silent one) or silent (stopped, killed, lost)
    before_first_step: bool = False  # beating, past a restore or a batch, but not its attempt's first step
    node_silent: bool = False  # its whole node went silent after another rank died of a lost peer (stalls.find_lost_node)

    def to_json(self) -> dict[str, Any]:
        """`launch status --json`'s `stalled`: the heartbeat's fields and the four above."""
        return {**self.beat.to_json(), "idle_s": self.idle_s, "silent_s": self.silent_s, "beating": self.beating,
                "before_first_step": self.before_first_step, "node_silent": self.node_silent}


@dataclass(frozen=True)
class StragglingRank:
    """A rank `stragglers.find_stragglers` names: its heartbeat, and how much slower it computes."""

    beat: Heartbeat
    factor: float  # its compute_s over median_s
    median_s: float  # the median compute_s of the other ranks

    def to_json(self) -> dict[str, Any]:
        """`launch status --json`'s `stragglers`: the heartbeat's fields and the two above."""
        return {**self.beat.to_json(), "factor": self.factor, "median_s": self.median_s}


@dataclass(frozen=True)
class PlanNode(Record):
    node: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Plan(Record):
    """plan.json: the local backend's torchrun agents, one a node, as argument lists."""

    workdir: str
    nodes: list[PlanNode]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        return cls(workdir=data.get("workdir") or "", nodes=[PlanNode.from_json(n) for n in data.get("nodes", [])])


@dataclass(frozen=True)
class SlurmJob(Record):
    """slurm.json: the run's current SLURM job (a replacement job switches it)."""

    job_id: str
    array_job_id: str | None = None  # a sweep's job array
    here_runner_pid: int | None = None  # launch submit --here: the runner inside the allocation

    OPTIONAL = ("array_job_id", "here_runner_pid")


@dataclass(frozen=True)
class Preemption(Record):
    """What the `preempted` event records: where every rank stopped, and how the save went."""

    step: int
    epoch: int = 0
    batch_in_epoch: int = 0
    signal: str = "from another rank"  # the signal's name (USR1, TERM) where this rank got it
    signal_at: float | None = None  # when the signal came (time.time())
    signal_to_saved_s: float | None = None
    save_s: float | None = None
    checkpoint_bytes: int | None = None  # rank zero's view of the checkpoint's size


@dataclass(frozen=True)
class Progress(Record):
    """progress.json: where rank zero is (kept current by runtime/progress.py, at most 20 times a second)."""

    stage: str = ""
    global_step: int = 0
    epoch: int = 0
    metrics: Mapping[str, float] = field(default_factory=dict)
    world_size: int | None = None
    time: float | None = None
    pid: int | None = None


@dataclass(frozen=True)
class LocalProbeDetails(Record):
    """What the local backend's probe saw of a run (`launch status --json` shows it)."""

    supervisor_pid: int | None = None


@dataclass(frozen=True)
class SlurmProbeDetails(Record):
    """What the SLURM backend's probe saw of a run (`launch status --json` shows it)."""

    slurm_job_id: str | None = None
    slurm_state: str | None = None  # squeue's (or scontrol's) state of the job
    completing_on_lost_nodes: list[str] | None = None  # COMPLETING only on nodes that no longer answer
    here_runner_pid: int | None = None  # launch submit --here: the runner inside the allocation

    OPTIONAL = ("completing_on_lost_nodes", "here_runner_pid")


ProbeDetails = LocalProbeDetails | SlurmProbeDetails


def probe_details(data: Mapping[str, Any]) -> ProbeDetails:
    """The details record a mapping of them describes (the SLURM one if it names any SLURM key)."""
    slurm = {f.name for f in dataclasses.fields(SlurmProbeDetails)}
    return SlurmProbeDetails.from_json(data) if slurm & set(data) else LocalProbeDetails.from_json(data)
