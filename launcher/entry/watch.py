"""`python -m launcher.entry.watch RUN_DIR SRUN_PID`: the SLURM batch script's stall watcher.

It runs on the batch host next to the job's srun (outside any container) until srun exits. Every
LOOK_S it reads the ranks' heartbeats (a file a node), records a `straggler` event for a rank first seen
straggling (launcher/stragglers.py), and a rank without progress for `job.stall_timeout_s`
(stopped, hung in a collective, or on a node that died; a node whose every rank went silent after
another rank died of a lost peer at once: stalls.find_lost_node) stalls the attempt, as under the local
supervisor: it records the `stalled` event and kills the step's tasks (`scancel --signal=KILL
JOB.STEP`, from the heartbeats; srun itself if no step is known). srun then exits, and the end
hook classifies the attempt as an infrastructure failure ("Stalled", or "NodeLost" when a node no
longer answers) and restarts it: the next srun step of this allocation, a new job without a lost
node, or (--here) the runner's next step; it resumes from the newest complete checkpoint.

SLURM's SIGTERM (the job cancelled, out of time, or requeued by SLURM itself because a node of it
went down) ends the watch; a requeue by SLURM is then recorded (entry/requeue.py:
record_slurm_requeue).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher.attempts import rank_errors
from launcher.config import load_resolved
from launcher.config.schema import JobSection
from launcher.entry.requeue import record_slurm_requeue
from launcher.processes import exists
from launcher.rundir import RunDir
from launcher.stalls import HEARTBEAT_S, find_lost_node, find_stall, record_stall
from launcher.stragglers import find_stragglers, record_stragglers

# A look reads one file a node (runtime/beat_channel.py): at 1,024 nodes, 410 reads a second
LOOK_S = HEARTBEAT_S / 2
KILL_WAIT_S = 10.0  # srun's own exit after its tasks are killed (1-2 s; never, on a dead node); then srun itself


def stop_step(steps: set[str], srun_pid: int) -> None:
    """SIGKILL the step's tasks (a stopped rank ignores anything else); srun exits after them."""
    for step in sorted(steps):
        subprocess.run(["scancel", "--signal=KILL", step], capture_output=True, text=True)
    deadline = time.monotonic() + (KILL_WAIT_S if steps else 0)
    while exists(srun_pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if exists(srun_pid):
        os.kill(srun_pid, signal.SIGKILL)  # the requeue (or the job's end) then ends the tasks


def main(argv: list[str]) -> int:
    run, srun_pid = RunDir(Path(argv[0])), int(argv[1])
    cfg = load_resolved(run.config)
    job = cfg.job
    # SLURM's SIGTERM: the job is ending or (a node of it down) being requeued by SLURM, which kills
    # this batch script too: say which, and shorten the hold, before SLURM's SIGKILL (KillWait)
    terminated: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
    try:
        return watch(run, srun_pid, job, terminated)
    finally:
        if terminated and not os.environ.get("LAUNCH_HERE") and record_slurm_requeue(run, cfg.cluster.shorten_requeue_hold):
            print("[launch] SLURM requeued the job (a node of it down): it resumes from the newest checkpoint", flush=True)


def watch(run: RunDir, srun_pid: int, job: JobSection, terminated: list[int]) -> int:
    timeout, first_step = job.stall_timeout_s, job.first_step_timeout_s
    start = time.time()
    seen: set[int] = set()  # this attempt's ranks recorded as stragglers
    excluded: set[str] = set()  # and nodes recorded bad for it
    looked = start
    while exists(srun_pid) and not terminated:
        time.sleep(1.0)
        if time.time() - looked < LOOK_S:
            continue
        looked = time.time()
        beats = run.read_heartbeats()
        for line in record_stragglers(run, find_stragglers(beats, start, job.straggler_factor), seen,
                            job.straggler_exclude_factor, excluded):
            print(f"[launch] {line}", flush=True)
        now = time.time()
        found = (find_lost_node(beats, now, start, lambda: rank_errors(run, start))
                 or find_stall(beats, now, start, timeout, first_step))
        if found is None:
            continue
        print(f"[launch] {record_stall(run, found, timeout, first_step)}", flush=True)
        stop_step({b.slurm_step for b in beats if b.slurm_step and b.beat_at >= start}, srun_pid)
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
