"""What `launch ui` and `launch report` show, as plain JSON-ready data read from run directories.

Pure reading: no server, no HTML, no torch. The page's script draws it; every string in it is a
run's own text (config values, error messages, metric names), which the page only ever puts in
the document as text (see page.py).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from launcher import backends
from launcher.events import (
    BadNode,
    EventRecord,
    Failed,
    Preempted,
    Queued,
    Requeued,
    RequeueFailed,
    Restarted,
    Resumed,
    Stalled,
    Started,
    Straggler,
    Submitted,
)
from launcher.ledger import PHASES, UNALLOCATED, Ledger, Segment, ledger, segments
from launcher.lifecycle import RunStatus
from launcher.records import RankError
from launcher.rundir import RunDir, list_runs
from launcher.stragglers import describe_event

MAX_POINTS = 5000  # a metric's points sent to the page; beyond it every k-th is shown (the page says so)
TEXT_LIMIT = 200_000  # characters of the config or the submitted script shown


def runs_table(runs_dir: Path) -> list[dict[str, Any]]:
    """One row a run under `runs_dir`, newest first: what the runs page lists."""
    runs = list_runs(runs_dir)
    now = time.time()
    rows = []
    for run, info in zip(runs, backends.statuses(runs), strict=True):
        events = run.history()
        rows.append(_run_row(run, info, events, ledger(events, now)))
    return sorted(rows, key=lambda r: r["submitted_t"] or 0.0, reverse=True)


def _run_row(run: RunDir, info: RunStatus, events: Sequence[EventRecord], book: Ledger | None) -> dict[str, Any]:
    submitted = next((e for e in events if isinstance(e, Submitted)), None)
    return {
        "run_id": info.run_id, "job": info.job, "state": str(info.state), "terminal": info.terminal,
        "step": info.global_step, "epoch": info.epoch, "restarts": info.restarts,
        "goodput": book.goodput if book else None, "wall_s": round(book.wall_s, 1) if book else None,
        "submitted": submitted.time if submitted else "", "submitted_t": submitted.at if submitted else None,
        "ref": f"{run.job_name}/{run.run_id}",
    }


def run_page(run: RunDir) -> dict[str, Any]:
    """Everything the page of one run shows."""
    now = time.time()
    info = backends.status(run)
    events = run.history()
    cut = segments(events, now)
    origin = cut[0].start if cut else now
    book = ledger(events, now, cut)
    script = run.script(info.backend)
    return {
        "run": {**_run_row(run, info, events, book), "dir": str(run.path), "backend": info.backend,
                "world_size": info.world_size, "error": info.error, "note": info.note},
        "origin": origin,
        "now": now,
        "phases": list(PHASES),
        "unallocated": list(UNALLOCATED),
        "attempts": attempts(events, cut, origin),
        "ledger": book.as_dict() if book else None,
        "metrics": metric_series(run.read_metrics()),
        "boundaries": step_boundaries(events),
        "heartbeats": [{"rank": b.rank, "host": b.host, "step": b.step, "slowest_step_s": b.slowest_step_s,
                        "compute_s": b.compute_s,
                        "progress_ago_s": round(now - b.progress_at, 1) if b.progress_at else None,
                        "beat_ago_s": round(now - b.beat_at, 1) if b.beat_at else None, "done": b.done}
                       for b in run.read_heartbeats()],
        "errors": errors(run, events),
        "config": _text(run.config),
        "script": _text(script),
        "script_name": script.name,
        "events": [{"t": round(e.at - origin, 3) if e.at is not None else None, "event": e.event,
                    "time": e.time} for e in events],
    }


def attempts(events: Sequence[EventRecord], cut: Sequence[Segment], origin: float) -> list[dict[str, Any]]:
    """The run's attempts, one a bar: the wait before it (queue, requeue, stopped), then its own
    phases; each with its `started` event's host and SLURM job, and the markers that fell in it."""
    began = [e for e in events if isinstance(e, Started) and e.at is not None]
    if not cut:
        return []
    # an attempt's bar begins where the wait before its `started` began (queue, requeue, stopped)
    begins = []
    for e in began:
        i = max((k for k, seg in enumerate(cut) if seg.start <= e.at), default=0)
        while i > 0 and cut[i - 1].phase in UNALLOCATED:
            i -= 1
        begins.append(cut[i].start)
    begins = begins or [cut[0].start]
    begins[0] = min(begins[0], cut[0].start)
    ends = begins[1:] + [cut[-1].end]
    out = []
    for n, (start, end) in enumerate(zip(begins, ends, strict=True), start=1):
        bar = [seg for seg in cut if start <= seg.start < end or (n == len(begins) and seg.start >= end)]
        # an attempt's end (restarted, requeued, failed) is the next one's start: it marks this one
        inside = [e for e in events if e.at is not None
                  and (start < e.at <= end or (n == 1 and e.at == start) or (n == len(begins) and e.at > end))]
        first = began[n - 1] if n <= len(began) else None
        out.append({
            "attempt": n,
            "host": first.host if first else None,
            "slurm_job_id": first.slurm_job_id if first else None,
            "segments": [{"phase": s.phase, "start": round(s.start - origin, 3), "end": round(s.end - origin, 3)}
                         for s in bar if s.seconds > 0],
            "markers": [m for e in inside if (m := marker(e, origin))],
        })
    return out


def marker(e: EventRecord, origin: float) -> dict[str, Any] | None:
    """A point on the timeline for an event a person looks for, with what to say of it."""
    text = None
    if isinstance(e, Preempted):
        text = f"preempted at step {e.step} (epoch {e.epoch}, batch {e.batch_in_epoch}; {e.signal or 'signal'})"
        if e.save_s is not None:
            text += f", saved in {e.save_s:.2f} s"
    elif isinstance(e, Restarted):
        text = f"restart #{e.restart}: {e.cause}"
    elif isinstance(e, Stalled):
        text = f"rank {e.rank} on {e.host} stalled at step {e.step} ({e.idle_s} s without progress)"
    elif isinstance(e, Straggler):
        text = f"straggler {describe_event(e)}"
    elif isinstance(e, BadNode):
        text = f"bad node {e.host} ({e.reason}): later jobs exclude it"
    elif isinstance(e, Requeued) and (e.by_slurm or e.lost_nodes):
        lost = f", lost {', '.join(e.lost_nodes)}" if e.lost_nodes else ""
        text = f"requeued by SLURM ({e.by_slurm})" if e.by_slurm else "requeued"
        text += lost
    elif isinstance(e, Queued) and e.excluded_nodes:
        text = f"excluded nodes: {', '.join(e.excluded_nodes)}"
    elif isinstance(e, RequeueFailed):
        text = f"requeue failed: {e.error}"
    elif isinstance(e, Failed):
        text = f"failed: {e.error or f'exit code {e.exit_code}'}"
    elif isinstance(e, Resumed):
        text = f"resumed at step {e.global_step} (epoch {e.epoch}{', mid-epoch' if e.mid_epoch else ''})"
    if text is None or e.at is None:
        return None
    return {"t": round(e.at - origin, 3), "event": e.event, "text": text}


def step_boundaries(events: Sequence[EventRecord]) -> dict[str, list[dict[str, Any]]]:
    """Where on the step axis each attempt resumed, and the steps trained twice (an attempt that
    died past its last checkpoint: its steps after it were rewound and trained again)."""
    resumes, rewound, reached = [], [], None
    for e in events:
        if isinstance(e, Restarted | Failed) and e.step_reached is not None:
            reached = int(e.step_reached)
        elif isinstance(e, Resumed) and e.global_step is not None:
            resumes.append({"step": int(e.global_step), "text": f"resumed at step {e.global_step}"})
            if reached is not None and reached > int(e.global_step):
                rewound.append({"from": int(e.global_step), "to": reached,
                                "text": f"steps {e.global_step + 1}-{reached} rewound and trained again"})
            reached = None
    return {"resumes": resumes, "rewound": rewound}


def metric_series(rows: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """metrics.csv's rows as one series a metric: x the step (the row's `step`, else its index)."""
    names = [n for n in (rows[0].keys() if rows else []) if n not in ("step", "epoch")]
    series = []
    for name in names:
        points = [(_number(r.get("step")) if r.get("step") else i, v) for i, r in enumerate(rows)
                  if (v := _number(r.get(name))) is not None]
        every = max(1, math.ceil(len(points) / MAX_POINTS))
        shown = points[::every] + (points[-1:] if every > 1 and (len(points) - 1) % every else [])
        series.append({"name": name, "x": [p[0] for p in shown], "y": [p[1] for p in shown],
                       "points": len(points), "every": every})
    return {"series": series, "rows": len(rows)}


def errors(run: RunDir, events: Sequence[EventRecord]) -> list[dict[str, Any]]:
    """The rank errors on record and the failures the events name."""
    out = []
    for path in sorted(run.errors.glob("rank-*.json")):
        rec = RankError.read(path)
        if rec is not None:
            out.append({"source": f"rank {rec.rank} on {rec.host}", "text": rec.text, "detail": rec.traceback})
    for e in events:
        if isinstance(e, Failed) and e.error:
            out.append({"source": f"failed ({e.time})", "text": e.error, "detail": ""})
        elif isinstance(e, Restarted):
            out.append({"source": f"restart #{e.restart} ({e.time})", "text": e.cause, "detail": ""})
        elif isinstance(e, RequeueFailed):
            out.append({"source": f"requeue ({e.time})", "text": e.error, "detail": ""})
    return out


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _text(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + f"\n... ({len(text) - TEXT_LIMIT} more characters)"
