"""What `launch status` says of a run, beyond its lifecycle state: what a pending run waits for,
its automatic restarts, a preemption that used most of its grace, a stalled rank, the slowest
step and where the time went. As lines for people and as a dict for --json."""

from __future__ import annotations

import time
from typing import Any

from launcher import backends, config, dependencies
from launcher.attempts import grace_warning
from launcher.badnodes import bad_nodes
from launcher.badnodes import describe as describe_bad
from launcher.checkpoint_interval import FIRST_S
from launcher.config import JobConfig
from launcher.errors import LaunchError
from launcher.events import CheckpointInterval, Restarted, Started, Straggler
from launcher.ledger import ledger
from launcher.lifecycle import State, last_event, this_attempt
from launcher.rundir import RunDir
from launcher.stalls import STALL_REPORT_S, describe_stall, find_stall
from launcher.stragglers import describe_event, describe_straggler, find_stragglers


def frozen_config(run: RunDir) -> JobConfig | None:
    """The run's config, for what status compares against it (None: a run directory without one)."""
    try:
        return config.load_resolved(run.config)
    except (LaunchError, OSError):
        return None


def checkpoint_interval(cfg: JobConfig, events: list) -> str:
    """How often the periodic checkpoint is taken, and why (auto: rank zero's last choice)."""
    ck = cfg.checkpoint
    steps = f"every {ck.every_n_train_steps} steps; " if ck.every_n_train_steps else ""
    if ck.every_n_minutes != "auto":
        return steps + (f"every {ck.every_n_minutes:g} min (checkpoint.every_n_minutes)" if ck.every_n_minutes
                        else "not by time (checkpoint.every_n_minutes = 0)")
    chosen = last_event(events, CheckpointInterval)
    return steps + "auto, " + (chosen.why if chosen else f"every {FIRST_S / 60:.0f} min until a save has been timed")


def status_report(run: RunDir) -> tuple[dict[str, Any], list[str]]:
    """(the --json dict, the lines `launch status` prints)."""
    info = backends.status(run)
    events, cfg, now, beats = run.history(), frozen_config(run), time.time(), run.read_heartbeats()
    waiting = dependencies.waiting_for(run) if info.state == State.PENDING else []
    warning = grace_warning(events, cfg.cluster.signal_grace_s) if cfg else None
    book = ledger(events, now)
    started = last_event(events, Started)
    since = (started.at if started else None) or 0.0
    after = min(STALL_REPORT_S, cfg.job.stall_timeout_s) if cfg else STALL_REPORT_S
    first = cfg.job.first_step_timeout_s if cfg else None
    stalled = find_stall(beats, now, since, after, first) if info.state == State.RUNNING else None
    factor = cfg.job.straggler_factor if cfg else 0.0
    straggling = find_stragglers(beats, since, factor) if info.state == State.RUNNING else []
    seen = [e for e in this_attempt(events) if isinstance(e, Straggler)]  # the attempt's first sightings
    slowest = max((b.slowest_step_s for b in beats), default=0.0)
    bad = bad_nodes(events)  # what every later SLURM job of the run excludes
    data = {**info.as_dict(), "waiting_for": waiting, "warning": warning, "bad_nodes": bad,
            "stalled": stalled.to_json() if stalled else None,
            "stragglers": [s.to_json() for s in straggling], "stragglers_seen": [e.to_json() for e in seen],
            "slowest_step_s": slowest or None, "ledger": book.as_dict() if book else None}
    lines = [f"run       {info.run_id} ({info.job})", f"state     {info.state}"]
    lines += [f"waiting   for {line}" for line in waiting]
    lines.append(f"progress  step {info.global_step}, epoch {info.epoch}, restarts {info.restarts}")
    lines += [f"restart   #{e.restart} after {e.elapsed_s} s: {e.cause}"
              for e in events if isinstance(e, Restarted)]  # job.restart_on: each one and its cause
    lines += [f"  {key:<14} {value:.6g}" for key, value in sorted(info.metrics.items())]
    for label, text in (("error", info.error), ("note", info.note), ("warning", warning),
                        ("stalled", describe_stall(stalled) if stalled else None)):
        if text:
            lines.append(f"{label:<9} {text}")
    if bad:
        lines.append(f"excluded  {describe_bad(bad)}: later SLURM jobs of this run do not use them")
    # job.straggler_factor: the ranks straggling now; else those the attempt saw, when it saw them
    lines += [f"straggler {describe_straggler(s)}" for s in straggling]
    if not straggling:
        lines += [f"straggled {describe_event(e)}" for e in seen]
    if slowest:  # job.stall_timeout_s must be well above it
        lines.append(f"steps     the slowest took {slowest:.2f} s (a rank without progress for job.stall_timeout_s "
                     "is stalled)")
    if cfg and cfg.job.preemptible:  # the periodic full-state checkpoint: the interval and why
        lines.append(f"ckpt      {checkpoint_interval(cfg, events)}")
    if book:
        lines.append(f"time      {book.line()}")
    lines.append(f"dir       {info.run_dir}")
    return data, lines
