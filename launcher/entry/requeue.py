"""The batch script's end hook puts a preempted SLURM job back in the queue (torch-free).

It runs in the batch script after srun, on the host: the ranks may be in a container without
SLURM's client tools (pyxis#129), and need none."""

from __future__ import annotations

import signal
import subprocess
from typing import Any

from launcher.lifecycle import Event
from launcher.rundir import RunDir
from launcher.slurm_env import current_job_id, queue_state

REQUEUE_START_AFTER_S = 2  # past the second the old credential was revoked in (slurmd compares seconds)


def requeue_on_slurm(run: RunDir, shorten_hold: bool = True, **fields: Any) -> None:
    """`scontrol requeue` this job, unless the user asked to cancel it; the outcome is an event.

    SLURM then holds the job until requeue + cred_expire + 1 s (its BeginTime: 121 s with the
    default cred_expire), so that no node launches it with a credential older than the requeue.
    slurmd refuses only a credential created at or before the second it was revoked in, so with
    `shorten_hold` the job's StartTime becomes now + 2 s (`scontrol update`, which the job's owner
    may do): measured on the test cluster with cred_expire=120, back on the same node 2 s after
    the requeue instead of 121 s."""
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
        if shorten_hold:
            fields["start_after_s"] = REQUEUE_START_AFTER_S if start_soon(job_id) else None
        run.add_event(Event.REQUEUED, slurm_job_id=job_id, **fields)
        return
    state = queue_state(job_id)
    if state in SLURM_REQUEUED:  # SLURM put it back itself (a node failure, with JobRequeue): a requeue all the same
        run.add_event(Event.REQUEUED, slurm_job_id=job_id, by_slurm=state, **fields)
    else:
        error = (out.stderr or out.stdout).strip()[:300] or f"scontrol requeue exited {out.returncode}, saying nothing"
        run.add_event(Event.REQUEUE_FAILED, slurm_job_id=job_id, error=error + (f" (job {state})" if state else ""))


def start_soon(job_id: str) -> bool:
    """Replace SLURM's post-requeue hold by one of REQUEUE_START_AFTER_S; False if SLURM refused."""
    out = subprocess.run(["scontrol", "update", f"JobId={job_id}", f"StartTime=now+{REQUEUE_START_AFTER_S}"],
                         capture_output=True, text=True)
    return out.returncode == 0


# squeue states of a job that is back in the queue, or on its way there
SLURM_REQUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "CONFIGURING"}

