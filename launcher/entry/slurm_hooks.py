"""Called by the rendered batch script around `srun`: records the attempt in `events.jsonl`.

    python -m launcher.entry.slurm_hooks started RUN_DIR
    python -m launcher.entry.slurm_hooks ended RUN_DIR EXIT_CODE

This keeps `launch status` working on clusters without accounting (no sacct). `ended` exits
with RESTART_IN_ALLOCATION (3) when the run restarts by itself (job.restart_on) and every node
still answers: the batch script then starts the next attempt as a new srun step of the same
allocation, without going back to the queue.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from launcher.attempts import grace_warning, preflight_failures, record_end, record_not_requeued, requeue_fields
from launcher.badnodes import record_bad_nodes
from launcher.config import load_resolved
from launcher.entry.requeue import record_slurm_requeue, replace_job, requeue_on_slurm, suspect_nodes, unreachable
from launcher.events import Event, Preempted, Requeued, Started
from launcher.lifecycle import last_event, names, starts, this_attempt
from launcher.render import RESTART_IN_ALLOCATION
from launcher.rundir import RunDir
from launcher.slurm_env import current_job_id, node_name, restart_count


def requeue(run: RunDir, **fields: Any) -> None:
    """Run this job again: `scontrol requeue`, or inside an allocation (--here) the runner starts
    the next srun step once this records it."""
    if os.environ.get("LAUNCH_HERE"):
        run.add_event(Event.REQUEUED, slurm_job_id=current_job_id(), in_allocation=True, **fields)
    else:
        requeue_on_slurm(run, load_resolved(run.config).cluster.shorten_requeue_hold, **fields)


def lost_nodes(run: RunDir, since: float) -> list[str]:
    """The nodes of this failed attempt that no longer answer (probed only where a rank died
    without a word or stalled)."""
    suspects, job_id = suspect_nodes(run, since), current_job_id()
    if not suspects or not job_id:
        return []
    lost = unreachable(suspects, job_id)
    if lost:
        print(f"[launch] node(s) {', '.join(lost)} do not answer: lost", flush=True)
    return lost


def note_unseen_slurm_requeue(run: RunDir) -> None:
    """A requeue SLURM made that nothing recorded (the batch host was the node that failed): this
    job's SLURM_RESTART_COUNT past its last start's, with no `requeued` since."""
    events, job_id = run.history(), current_job_id()
    started = last_event(events, Started)
    if (started and started.slurm_job_id == job_id and restart_count() > (started.slurm_restart_count or 0)
            and Event.REQUEUED not in names(this_attempt(events))):
        run.add_event(Event.REQUEUED, slurm_job_id=job_id, by_slurm="REQUEUED", seen_at_start=True)


def main(argv: list[str]) -> int:
    what, run = argv[0], RunDir(Path(argv[1]))
    if what == Event.STARTED:  # the hook's verb is the event it records
        note_unseen_slurm_requeue(run)
        run.add_event(Event.STARTED, backend="slurm", slurm_job_id=current_job_id(), host=node_name(),
                      restart_count=starts(run.history()),
                      slurm_restart_count=restart_count(), t=time.time())
        return 0
    if what == "ended":
        events = run.history()
        attempt = names(this_attempt(events))
        if Event.CANCEL_REQUESTED in attempt:  # launch cancel records the end once the job is gone
            print(f"[launch] run {run.run_id} cancelled", flush=True)
            return 0
        requeued = last_event(this_attempt(events), Requeued)
        if not os.environ.get("LAUNCH_HERE") and ((requeued and requeued.by_slurm) or record_slurm_requeue(
                run, load_resolved(run.config).cluster.shorten_requeue_hold)):
            print(f"[launch] run {run.run_id}: SLURM requeued the job (a node of it down); it resumes from the newest "
                  "checkpoint", flush=True)
            return 0
        if Event.PREEMPTED in attempt and Event.REQUEUED not in attempt:
            requeue(run, **requeue_fields(last_event(this_attempt(events), Preempted)))
            events = run.history()
            attempt = names(this_attempt(events))
        if Event.PREEMPTED in attempt and Event.REQUEUED in attempt:
            print(f"[launch] run {run.run_id} preempted: saved, and back in the queue", flush=True)
            warning = grace_warning(events, load_resolved(run.config).cluster.signal_grace_s)
            if warning:
                print(f"[launch] warning: {warning}", flush=True)
            return 0
        if Event.PREEMPTED in attempt:
            record_not_requeued(run, int(argv[2]))
            return 0
        started = last_event(events, Started)
        t0 = (started.at if started else None) or time.time()
        cfg = load_resolved(run.config)
        exit_code, here = int(argv[2]), bool(os.environ.get("LAUNCH_HERE"))
        lost = lost_nodes(run, t0) if exit_code != 0 else []
        failed = {r.host: f"pre-flight: {r.message.split(': ', 1)[-1][:500]}"
                  for r in preflight_failures(run, t0) if r.host not in lost} if exit_code != 0 else {}
        record_bad_nodes(run, {**{node: "lost" for node in lost}, **failed})
        swap = [*lost, *failed]  # nodes the next attempt must not use
        restart_on = "never" if swap and here else cfg.job.restart_on  # an allocation cannot swap a node
        ending = record_end(run, exit_code, t0, round(time.time() - t0, 1), restart_on, cfg.job.max_restarts, lost,
                            cfg.job.max_identical_failures)
        print(f"[launch] run {run.run_id} {ending.summary}", flush=True)
        if ending.restarting and not swap and not here:  # every node answers: keep the allocation, the next step resumes
            run.add_event(Event.REQUEUED, slurm_job_id=current_job_id(), in_allocation=True)
            return RESTART_IN_ALLOCATION
        if ending.restarting:  # a lost or failed node: a new job on other nodes (a requeue would wait for
            # SLURM to see a loss, and could run on the failed node again); --here: the runner's next step
            if swap:
                replace_job(run, lost, list(failed))
            else:
                requeue(run)
            if Event.REQUEUE_FAILED in names(this_attempt(run.history())):
                what = ("the job without the lost node was refused" if lost else
                        "the job without the node that failed its pre-flight check was refused" if swap else
                        "the requeue was refused")
                run.add_event(Event.FAILED, exit_code=exit_code or 1, rank=None,
                              error=f"{ending.summary}, but {what}; continue with: launch resume {run.path}")
        return 0
    print(f"usage: {sys.argv[0]} started|ended RUN_DIR [EXIT_CODE]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
