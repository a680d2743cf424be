"""Where runs execute: `local` (torchrun under a detached supervisor) and `slurm` (submitit)."""

from __future__ import annotations

from typing import Any

from launcher.rundir import TERMINAL_STATES, RunDir

# Lifecycle events and the state each leaves a run in.
STATE_OF_EVENT = {
    "submitted": "pending",
    "started": "running",
    "finished": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


def summarize(run: RunDir, alive: bool | None) -> dict[str, Any]:
    """The run's state from its own records; `alive` is whether its supervisor still runs."""
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
    if state in ("pending", "running") and alive is False:
        state, error = "failed", error or "the run's supervisor is gone without recording an end (killed?)"
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
