"""Called by the rendered batch script around `srun`: records the attempt in `events.jsonl`.

    python -m launcher.backends.slurm_hooks started RUN_DIR
    python -m launcher.backends.slurm_hooks ended RUN_DIR EXIT_CODE

This keeps `launch status` working on clusters without accounting (no sacct).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from launcher.backends.outcome import record_end
from launcher.rundir import RunDir


def current_job_id() -> str | None:
    """This job's id as launch records it: ARRAYID_INDEX for a job-array task (as submitit
    names it, and as squeue, scancel and scontrol accept it), else SLURM_JOB_ID."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


def main(argv: list[str]) -> int:
    what, run = argv[0], RunDir(Path(argv[1]))
    job_id = current_job_id()
    if what == "started":
        run.add_event("started", backend="slurm", slurm_job_id=job_id, host=socket.gethostname(),
                      restart_count=int(os.environ.get("SLURM_RESTART_COUNT", "0")), t=time.time())
        return 0
    if what == "ended":
        events = run.read_events()
        last_start = max((i for i, e in enumerate(events) if e.get("event") == "started"), default=-1)
        since_start = [e.get("event") for e in events[last_start + 1:]]
        if "preempted" in since_start and "requeued" in since_start:
            print(f"[launch] run {run.run_id} preempted: saved, and back in the queue", flush=True)
            return 0
        if "preempted" in since_start:
            run.add_event("failed", exit_code=int(argv[2]) or 1, rank=None,
                          error=f"preempted and saved, but not requeued; continue it with: launch resume {run.path}")
            return 0
        started = events[last_start] if last_start >= 0 else {}
        t0 = float(started.get("t", time.time()))
        finished, summary = record_end(run, int(argv[2]), t0, round(time.time() - t0, 1))
        print(f"[launch] run {run.run_id} {summary}", flush=True)
        return 0
    print(f"usage: {sys.argv[0]} started|ended RUN_DIR [EXIT_CODE]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
