"""Where runs execute: `local` (torchrun under a detached supervisor) and `slurm` (submitit)."""

from __future__ import annotations

import tomllib
from types import ModuleType
from typing import Any

from launcher.rundir import TERMINAL_STATES, RunDir

# Lifecycle events and the state each leaves a run in.
STATE_OF_EVENT = {
    "submitted": "pending",
    "queued": "pending",
    "started": "running",
    "resume_requested": "pending",
    "requeued": "pending",
    "finished": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


def backend_name(run: RunDir) -> str:
    try:
        with open(run.config, "rb") as fh:
            return tomllib.load(fh).get("cluster", {}).get("backend", "local")
    except (OSError, tomllib.TOMLDecodeError):
        return "local"


def for_run(run: RunDir) -> ModuleType:
    """The backend module that runs `run` (imported lazily: slurm pulls in submitit)."""
    if backend_name(run) == "slurm":
        from launcher.backends import slurm

        return slurm
    from launcher.backends import local

    return local


def describe(run: RunDir) -> dict[str, Any]:
    """Everything `launch status` shows: the run's own records, checked against the backend."""
    backend = for_run(run)
    alive, extra = backend.probe(run)
    info = summarize(run, alive, None if alive else backend.explain_end(extra))
    info["backend"] = backend_name(run)
    info.update(extra)
    return info


def summarize(run: RunDir, alive: bool, ended_as: tuple[str, str] | None) -> dict[str, Any]:
    """The run's state from its own records; `alive` is whether its supervisor or job still runs,
    and `ended_as` is the backend's (state, reason) for a run gone without recording its end."""
    events = run.read_events()
    state, info = "unknown", {}
    restarts = -1
    error = None
    for ev in events:
        name = ev.get("event")
        if name in STATE_OF_EVENT:
            state = STATE_OF_EVENT[name]
            info[f"{name}_at"] = ev.get("time")
        if name == "started":
            restarts += 1
        if name == "failed":
            error = ev.get("error")
            info["exit_code"] = ev.get("exit_code")
            info["failed_rank"] = ev.get("rank")
    if state in ("pending", "running") and not alive and ended_as is not None:
        state, why = ended_as
        error = error or why
    progress = run.read_progress()
    trained = next((ev for ev in reversed(events) if ev.get("event") == "trained"), None)
    metrics = (trained or {}).get("metrics") or progress.get("metrics", {})
    return {
        "run_id": run.run_id,
        "job": run.job_name,
        "run_dir": str(run.path),
        "state": state,
        "terminal": state in TERMINAL_STATES,
        "global_step": (trained or progress).get("global_step", 0),
        "epoch": (trained or progress).get("epoch", 0),
        "restarts": max(restarts, 0),
        "world_size": progress.get("world_size"),
        "metrics": metrics,
        "error": error,
        **info,
    }
