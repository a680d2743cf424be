"""How a run attempt ended, decided the same way by the local supervisor and the SLURM script."""

from __future__ import annotations

import json
from typing import Any

from launcher.rundir import RunDir


def first_error(run: RunDir, since: float) -> dict[str, Any] | None:
    """The earliest rank failure of this attempt: the cause; later ones are usually its echo."""
    records = []
    for path in run.errors.glob("rank-*.json"):
        try:
            mtime = path.stat().st_mtime
            if mtime + 1 < since:
                continue
            records.append((mtime, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            continue
    return min(records, key=lambda r: r[0])[1] if records else None


def record_end(run: RunDir, exit_code: int, started_at: float, elapsed_s: float) -> tuple[bool, str]:
    """Append `finished` or `failed` for an attempt whose ranks exited with `exit_code`.

    Finished means the ranks exited 0 AND rank zero recorded that training completed; returns
    (finished, one-line summary).
    """
    trained = [e for e in run.read_events() if e.get("event") == "trained"]
    if exit_code == 0 and trained and not trained[-1].get("interrupted"):
        last = trained[-1]
        run.add_event("finished", elapsed_s=elapsed_s, global_step=last.get("global_step"))
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(last.get("metrics", {}).items()))
        return True, f"completed in {elapsed_s} s: step {last.get('global_step')}, {shown}"
    err = first_error(run, started_at)
    if err:
        message = f"rank {err['rank']} ({err.get('host', '?')}): {err['type']}: {err['message']}"
    elif exit_code == 0:
        message = "the ranks exited without completing training"
    else:
        message = f"the ranks exited with {exit_code}; see {run.logs}"
    run.add_event("failed", elapsed_s=elapsed_s, exit_code=exit_code or 1,
                  rank=err["rank"] if err else None, error=message)
    return False, f"failed after {elapsed_s} s: {message}"
