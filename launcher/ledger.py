"""Where a run's wall time went, from its `events.jsonl` alone (pure: no processes, no torch).

The time from `submitted` to the run's end (or now) is cut at every event; each piece goes to the
phase the run was in at its start, so the phases add up to the wall time exactly:

    queue        submitted or queued, not started yet
    requeue      back in the queue after a preemption or a restart (SLURM's BeginTime hold included)
    stopped      failed or cancelled, until `launch resume` asked for it again (no job held)
    start-up     an attempt's start to its first step: imports, rendezvous, data set-up, restore
    training     the training steps (and validation between them)
    checkpoints  the preemption saves (each `preempted` event's save_s, taken out of training)
    stopping     from a saved preemption (or a cancel) to the attempt's exit
    finishing    from the end of training to the attempt's end: test, the last checkpoint, exit
    unrecorded   an attempt that ended without a record (every process killed), from its last
                 record to `launch resume`: how much of it ran is unknown (counted as allocated)

`recomputed` is the part of training spent on steps trained twice: an attempt that died after
step M and resumed from a checkpoint at step S trains M - S steps again (at the run's mean step
time). Goodput = (training - recomputed) / allocated, where allocated excludes the queue,
requeue and stopped phases.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from launcher.events import (
    Event,
    EventRecord,
    Failed,
    Finished,
    Preempted,
    Restarted,
    Resumed,
    ResumeRequested,
    Submitted,
    Trained,
    parse,
    typed,
)

PHASES = ("queue", "requeue", "stopped", "start-up", "training", "checkpoints", "stopping", "finishing",
          "unrecorded")
UNALLOCATED = ("queue", "requeue", "stopped")
PHASE_AFTER: Mapping[str, str] = {
    Event.SUBMITTED: "queue", Event.QUEUED: "queue",
    Event.REQUEUED: "requeue", Event.RESTARTED: "requeue", Event.RESUME_REQUESTED: "requeue",
    Event.STARTED: "start-up",
    Event.FIRST_STEP: "training",
    Event.PREEMPTED: "stopping", Event.CANCEL_REQUESTED: "stopping",
    Event.TRAINED: "finishing",
    Event.FINISHED: "stopped", Event.FAILED: "stopped", Event.CANCELLED: "stopped",
}
ENDS = (Event.FINISHED, Event.FAILED, Event.CANCELLED)


@dataclass(frozen=True)
class Ledger:
    wall_s: float
    phases: Mapping[str, float] = field(default_factory=dict)
    recomputed_s: float = 0.0
    recomputed_steps: int = 0

    @property
    def allocated_s(self) -> float:
        return self.wall_s - sum(self.phases.get(p, 0.0) for p in UNALLOCATED)

    @property
    def goodput(self) -> float | None:
        useful = self.phases.get("training", 0.0) - self.recomputed_s
        return round(useful / self.allocated_s, 3) if self.allocated_s > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return {"wall_s": round(self.wall_s, 3), **{f"{p}_s": round(self.phases.get(p, 0.0), 3) for p in PHASES},
                "recomputed_s": round(self.recomputed_s, 3), "recomputed_steps": self.recomputed_steps,
                "allocated_s": round(self.allocated_s, 3), "goodput": self.goodput}

    def line(self) -> str:
        """`wall 812 s: training 640 s, start-up 52 s, ... (recomputed 28 s, 14 steps); goodput 0.75`."""
        shown = ", ".join(f"{p} {self.phases[p]:.0f} s" for p in PHASES if self.phases.get(p, 0.0) >= 0.5)
        again = f" (of which recomputed {self.recomputed_s:.0f} s, {self.recomputed_steps} steps)" \
            if self.recomputed_steps else ""
        good = f"; goodput {self.goodput:.2f}" if self.goodput is not None else ""
        return f"wall {self.wall_s:.0f} s: {shown}{again}{good}"


def when(event: Mapping[str, Any] | EventRecord) -> float | None:
    """An event's time: its `t` (seconds), else its ISO `time` (to the second)."""
    return parse(event).at


@dataclass(frozen=True)
class Segment:
    """One piece of the run's wall time in one phase: [start, end) in seconds since the epoch."""

    phase: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def segments(events: Sequence[Mapping[str, Any] | EventRecord], now: float) -> list[Segment]:
    """The run's wall time cut into phases, in order (empty before it was submitted): the ledger's
    phases are their sums; `launch ui` draws them as the attempts' bars."""
    timed = [(t, e) for e in typed(events) if (t := e.at) is not None]
    start = next((i for i, (_, e) in enumerate(timed) if isinstance(e, Submitted)), None)
    if start is None:
        return []
    timed = timed[start:]
    ended = timed[-1][1].event in ENDS
    ends = [t for t, _ in timed[1:]] + [timed[-1][0] if ended else max(now, timed[-1][0])]
    cut: list[Segment] = []
    phase = "queue"
    for i, ((t, e), t_next) in enumerate(zip(timed, ends, strict=True)):
        phase = PHASE_AFTER.get(e.event, phase)
        if isinstance(e, Preempted) and e.save_s:
            _take_save(cut, float(e.save_s))
        resumed_next = i + 1 < len(timed) and isinstance(timed[i + 1][1], ResumeRequested)
        # an attempt that died without a record (its machine lost): from its last record to the resume
        counted = "unrecorded" if resumed_next and phase not in UNALLOCATED else phase
        if cut and cut[-1].phase == counted and cut[-1].end == t:  # one phase across events: one piece
            cut[-1] = Segment(counted, cut[-1].start, max(t, t_next))
        else:
            cut.append(Segment(counted, t, max(t, t_next)))
    return cut


def _take_save(cut: list[Segment], save_s: float) -> None:
    """A preemption's save happened at the end of the training before its event: that much of the
    latest training becomes `checkpoints` (at most the training there was)."""
    for i in range(len(cut) - 1, -1, -1):
        if save_s <= 0:
            return
        seg = cut[i]
        if seg.phase != "training" or seg.seconds <= 0:
            continue
        taken = min(save_s, seg.seconds)
        split = seg.end - taken
        cut[i:i + 1] = [Segment("training", seg.start, split), Segment("checkpoints", split, seg.end)]
        save_s -= taken


def ledger(events: Sequence[Mapping[str, Any] | EventRecord], now: float,
           cut: Sequence[Segment] | None = None) -> Ledger | None:
    """The ledger of a run's events (None before it was submitted); a run not ended runs to `now`.
    `cut`: the events' segments at `now`, when the caller has them already."""
    cut = segments(events, now) if cut is None else cut
    if not cut:
        return None
    history = typed(events)
    phases = dict.fromkeys(PHASES, 0.0)
    for seg in cut:
        phases[seg.phase] += seg.seconds
    reached, again = None, 0
    for e in history:  # steps trained twice: died after step M, resumed at S < M
        if isinstance(e, Restarted | Failed) and e.step_reached is not None:
            reached = int(e.step_reached)
        elif isinstance(e, Resumed) and reached is not None:
            again += max(0, reached - int(e.global_step if e.global_step is not None else reached))
            reached = None
    trained = max([int(e.global_step or 0) for e in history if isinstance(e, Trained | Finished)]
                  + [int(e.step or 0) for e in history if isinstance(e, Preempted)]
                  + [int(e.step_reached or 0) for e in history if isinstance(e, Restarted | Failed)] + [0])
    step_s = phases["training"] / (trained + again) if trained + again else 0.0
    wall = cut[-1].end - cut[0].start
    return Ledger(wall_s=wall, phases=phases, recomputed_s=min(again * step_s, phases["training"]),
                  recomputed_steps=again)
