"""The batch script's end hook puts a stopped SLURM job back in the queue (torch-free).

It runs in the batch script after srun, on the host: the ranks may be in a container without
SLURM's client tools (pyxis#129), and need none. A preempted or failed attempt whose nodes are all
still there is requeued (`scontrol requeue`: the same job id). One that lost a node is not: SLURM
would keep the requeued job COMPLETING on the dead node until it declares the node DOWN
(SlurmdTimeout, 300 s by default, and longer with its pings), so the run goes on as a new job that
excludes the lost nodes (`replace_job`), queued within seconds of the step's end."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

from launcher.attempts import dead_ranks
from launcher.badnodes import bad_nodes
from launcher.config import load_resolved
from launcher.errors import LaunchError
from launcher.events import CancelRequested, Event, Stalled
from launcher.lifecycle import last_event, this_attempt
from launcher.records import SlurmJob
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
    this_job = [e for e in run.history() if e.slurm_job_id == job_id]
    if not job_id or any(isinstance(e, CancelRequested) for e in this_job):
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

PROBE_TIMEOUT_S = 30.0  # srun reports a node that does not answer in ~10 s (MessageTimeout)
PROBE_BATCH = 64  # one-node probes at a time


def suspect_nodes(run: RunDir, since: float) -> list[str]:
    """The nodes that may have died with this attempt: those of the ranks that ended without a
    Python error and of the rank the watcher found stalled (a lost node's ranks do both)."""
    nodes = {str(d.host) for d in dead_ranks(run, since) if d.host and d.host != "?"}
    stalled = last_event(this_attempt(run.history()), Stalled)
    if stalled and stalled.host and stalled.host != "?":
        nodes.add(stalled.host)
    return sorted(nodes)


def unreachable(nodes: Sequence[str], job_id: str) -> list[str]:
    """The nodes of this job where a step cannot start: a `true` step on each (srun --overlap in
    the job's allocation, what its owner may do), PROBE_BATCH at a time, failed or not done in
    PROBE_TIMEOUT_S (a healthy node answers in a fraction of a second, a dead one fails in ~10 s).
    More suspects than a batch (a large job whose ranks were all killed) are first probed with one
    step over all of them, which usually answers for all at once."""
    if not nodes or (len(nodes) > PROBE_BATCH and _probe(nodes, job_id).wait() == 0):
        return []
    lost = []
    for i in range(0, len(nodes), PROBE_BATCH):
        batch = {node: _probe([node], job_id) for node in nodes[i:i + PROBE_BATCH]}
        lost += [node for node, proc in batch.items() if proc.wait() != 0]
    return sorted(lost)


def _probe(nodes: Sequence[str], job_id: str) -> subprocess.Popen:
    """A `true` task on each of `nodes`, as a step of the job; killed after PROBE_TIMEOUT_S."""
    return subprocess.Popen(["timeout", "-s", "KILL", str(int(PROBE_TIMEOUT_S)), "srun", f"--jobid={job_id}",
                             "--overlap", f"--nodes={len(nodes)}", f"--ntasks={len(nodes)}", "--ntasks-per-node=1",
                             f"--nodelist={','.join(nodes)}", "--cpus-per-task=1", "--kill-on-bad-exit=0", "--quiet",
                             "true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)


def replace_job(run: RunDir, lost: list[str], failed: Sequence[str] = (), **fields: Any) -> None:
    """Continue the run as a new SLURM job that excludes the `lost` nodes (the end hook, after a
    node died) or `failed` ones (their pre-flight check) and every node the run found bad before
    (launcher/badnodes.py): submitted exactly as `launch submit` does (the same frozen script, a
    new job id in slurm.json), recorded as `requeued` with both ids. This job then ends."""
    from launcher.backends.base import Placement
    from launcher.backends.slurm import SlurmBackend

    old = current_job_id()
    cfg = load_resolved(run.config)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dependency=""))  # it waited once already
    # sbatch from inside a job would hand this job's SLURM_* settings to the new one
    for name in [n for n in os.environ if n.startswith(("SLURM_", "SBATCH_", "SRUN_")) and n != "SLURM_CONF"]:
        del os.environ[name]
    try:
        exclude = tuple(dict.fromkeys([*lost, *failed, *bad_nodes(run.history())]))
        SlurmBackend().submit(cfg, run, Placement(exclude=exclude))
    except LaunchError as err:
        run.add_event(Event.REQUEUE_FAILED, slurm_job_id=old, error=str(err)[:300])
        return
    new = SlurmJob.from_json(json.loads(run.slurm_record.read_text())).job_id
    run.add_event(Event.REQUEUED, slurm_job_id=old, new_slurm_job_id=new, lost_nodes=lost, **fields)
