"""How a run attempt ended, decided the same way by the local supervisor and the SLURM script."""

from __future__ import annotations

import json
import re
from typing import Any

from launcher.rundir import RunDir

# A rank that fails in a collective because another rank died or hung: an echo, not the cause.
ECHO = re.compile(r"Connection closed by peer|Connection reset by peer|Broken pipe|[Tt]imed out|timeout|"
                  r"NCCL communicator was aborted|ProcessGroup.*abort|Gloo connectFullMesh failed")


def first_error(run: RunDir, since: float) -> dict[str, Any] | None:
    """The cause of this attempt's failure, from the ranks' own records.

    In order: the earliest Python error that is not an echo of another rank's failure; then the
    ranks that died without a word (their alive marker is still there: killed, out of memory,
    crashed in native code, or hung and stopped); then the earliest echo.
    """
    errors, dead = [], []
    for path in run.errors.glob("rank-*.json"):
        try:
            mtime = path.stat().st_mtime
            if mtime + 1 >= since:
                errors.append((mtime, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            continue
    for path in run.errors.glob("rank-*.alive"):
        try:
            if path.stat().st_mtime + 1 >= since:
                dead.append(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    errors.sort(key=lambda r: r[0])
    causes = [e for _, e in errors if not ECHO.search(f"{e.get('type')}: {e.get('message')}")]
    if causes:
        return causes[0]
    if dead:
        dead.sort(key=lambda d: d["rank"])
        first = dead[0]
        others = f" (also ranks {', '.join(str(d['rank']) for d in dead[1:])})" if len(dead) > 1 else ""
        echo = f"; then rank {errors[0][1]['rank']}: {errors[0][1]['type']}: {errors[0][1]['message'][:160]}" if errors else ""
        return {"rank": first["rank"], "host": first.get("host", "?"), "type": "Died",
                "message": "ended without a Python error: killed by a signal (or out of memory), crashed in "
                           f"native code, or hung and was stopped; see logs/rank-{first['rank']}.log{others}{echo}"}
    return errors[0][1] if errors else None


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
