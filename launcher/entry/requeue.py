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
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from launcher.attempts import dead_ranks
from launcher.badnodes import bad_nodes, record_bad_nodes
from launcher.config import load_resolved
from launcher.errors import LaunchError
from launcher.events import CancelRequested, Event, Stalled
from launcher.lifecycle import last_event, names, this_attempt
from launcher.records import SlurmJob
from launcher.rundir import RunDir
from launcher.slurm_env import current_job_id, hostnames, job_detail, partition_nodes, queue_state, restart_count, unhealthy_nodes

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
        run.add_event(Event.REQUEUED, slurm_job_id=job_id, **fields, **back_in_queue(run, job_id, shorten_hold))
        return
    state = queue_state(job_id)
    if state in SLURM_REQUEUED:  # SLURM put it back itself (a node failure, with JobRequeue): a requeue all the same
        run.add_event(Event.REQUEUED, slurm_job_id=job_id, by_slurm=state, **fields)
    else:
        error = (out.stderr or out.stdout).strip()[:300] or f"scontrol requeue exited {out.returncode}, saying nothing"
        run.add_event(Event.REQUEUE_FAILED, slurm_job_id=job_id, error=error + (f" (job {state})" if state else ""))


def back_in_queue(run: RunDir, job_id: str, shorten_hold: bool) -> dict[str, Any]:
    """What is done to a job requeued in place (by launch or by SLURM), as the `requeued` event's
    fields: the run's bad nodes it does not exclude yet added to its exclusions, and SLURM's hold
    replaced by REQUEUE_START_AFTER_S (`shorten_hold`)."""
    excluded = exclude_from_job(job_id, bad_nodes(run.history()))
    fields: dict[str, Any] = {"excluded_nodes": excluded} if excluded else {}
    if shorten_hold:
        fields["start_after_s"] = REQUEUE_START_AFTER_S if start_soon(job_id) else None
    return fields


def exclude_from_job(job_id: str, nodes: Sequence[str]) -> list[str]:
    """Add the run's bad `nodes` to this requeued job's ExcNodeList (`scontrol update`, which its
    owner may do) while its partition keeps enough other nodes for it: the nodes newly excluded;
    none if there were none to add, too few would be left, or SLURM refused."""
    detail = job_detail(job_id)
    have = set(hostnames(detail.get("ExcNodeList", "")))
    new = sorted(set(nodes) - have)
    if not new:
        return []
    left = set(partition_nodes(detail.get("Partition", ""))) - have - set(new)
    if len(left) < int(re.match(r"\d*", detail.get("NumNodes", "")).group() or 1):
        return []
    out = subprocess.run(["scontrol", "update", f"JobId={job_id}", f"ExcNodeList={','.join(sorted(have | set(new)))}"],
                         capture_output=True, text=True)
    return new if out.returncode == 0 else []


def start_soon(job_id: str) -> bool:
    """Replace SLURM's post-requeue hold by one of REQUEUE_START_AFTER_S; False if SLURM refused."""
    out = subprocess.run(["scontrol", "update", f"JobId={job_id}", f"StartTime=now+{REQUEUE_START_AFTER_S}"],
                         capture_output=True, text=True)
    return out.returncode == 0


def record_slurm_requeue(run: RunDir, shorten_hold: bool = True) -> bool:
    """If SLURM put this job back in the queue itself (a node of it set DOWN or failing, with
    JobRequeue; its `Restarts` past this attempt's SLURM_RESTART_COUNT): remember the job's nodes
    SLURM has down or failing as bad, and leave a process that records `requeued` (`by_slurm`) once the
    job is pending again, excluding the run's bad nodes from it and shortening the hold as for
    launch's own requeue (`after_slurm_requeue`). Asked by the watcher when SLURM's SIGTERM reaches
    it, and by the end hook (srun may exit first); whichever asks first. False if SLURM did not
    requeue the job, or a requeue of this attempt is recorded already."""
    job_id = current_job_id()
    if not job_id or Event.REQUEUED in names(this_attempt(run.history())):
        return False
    detail = job_detail(job_id)
    restarts = int(detail.get("Restarts", "0") or 0)
    if restarts <= restart_count():
        return False
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # SLURM's SIGTERM; its SIGKILL follows after KillWait
    try:
        os.close(os.open(run.slurm_requeue_claim(job_id, restarts), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return True  # the watcher or the end hook is on it
    # the job's nodes SLURM has down, draining or not responding. Not "the nodes gone from its
    # NodeList": a COMPLETING job's NodeList lists the nodes still completing, so a node that ended
    # its part first (any node, after a preemption or an `scontrol requeue`) would read as lost, and
    # once the job is pending (this watcher outlives the batch shell) the list is empty.
    nodes = os.environ.get("SLURM_JOB_NODELIST", "")
    down = unhealthy_nodes(nodes) if nodes else []
    record_bad_nodes(run, {node: "down (SLURM requeued the job)" for node in down})
    # The job stays COMPLETING while anything of it runs (this batch script included), and SLURM
    # sets its hold when it completes, over any StartTime set before: so a process of its own does
    # it, once the job is pending. It outlives the batch script where SLURM tracks processes by
    # process group or session (proctrack/linuxproc, pgid); with proctrack/cgroup SLURM ends it
    # with the job: the hold is then SLURM's, and the job's next start records the requeue.
    subprocess.Popen([sys.executable, "-m", "launcher.entry.requeue", str(run.path), job_id, ",".join(down),
                      "1" if shorten_hold else "0"], start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return True


PENDING_WAIT_S = 900.0  # how long after_slurm_requeue waits for the job to be pending (a dead node: SlurmdTimeout)


def after_slurm_requeue(run: RunDir, job_id: str, down: list[str], shorten_hold: bool) -> None:
    """Once SLURM's requeued job is pending: exclude the run's bad nodes, shorten the hold, record."""
    deadline, state = time.monotonic() + PENDING_WAIT_S, None
    while time.monotonic() < deadline:
        state = job_detail(job_id).get("JobState")
        if state != "COMPLETING":
            break
        time.sleep(0.2)
    fields = back_in_queue(run, job_id, shorten_hold) if state == "PENDING" else {}
    if Event.REQUEUED not in names(this_attempt(run.history())):
        run.add_event(Event.REQUEUED, slurm_job_id=job_id, by_slurm=state or "REQUEUED", lost_nodes=down, **fields)


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


if __name__ == "__main__":  # python -m launcher.entry.requeue RUN_DIR JOB_ID DOWN_NODES SHORTEN: after_slurm_requeue
    after_slurm_requeue(RunDir(Path(sys.argv[1])), sys.argv[2], [n for n in sys.argv[3].split(",") if n],
                        sys.argv[4] == "1")
