"""The batch script's end hook puts a preempted SLURM job back in the queue (torch-free).

It runs in the batch script after srun, on the host: the ranks may be in a container without
SLURM's client tools (pyxis#129), and need none."""

from __future__ import annotations

import signal
import subprocess
from typing import Any

from launcher.lifecycle import Event
from launcher.rundir import RunDir
from launcher.slurm_env import current_job_id


def requeue_on_slurm(run: RunDir, **fields: Any) -> None:
    """`scontrol requeue` this job, unless the user asked to cancel it; the outcome is an event."""
    job_id = current_job_id()
    # Only a cancel of this job counts: a run resumed after `launch cancel` is a new job.
    this_job = [e for e in run.read_events() if e.get("slurm_job_id") == job_id]
    if not job_id or any(e.get("event") == Event.CANCEL_REQUESTED for e in this_job):
        return
    # A requeue ends this batch script (SIGTERM, then SIGKILL after KillWait): ignore the SIGTERM
    # for the moment it takes to record the requeue.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if out.returncode == 0:
        run.add_event(Event.REQUEUED, slurm_job_id=job_id, **fields)
    else:
        run.add_event(Event.REQUEUE_FAILED, slurm_job_id=job_id, error=(out.stderr or out.stdout).strip()[:300])
