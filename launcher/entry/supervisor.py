"""`python -m launcher.entry.supervisor RUN_DIR`: runs and watches a local run's torchrun agents.

It records started / finished / failed / cancelled in `events.jsonl`. When one agent fails the
others are stopped (they would otherwise wait in a collective until the timeout), and when the
run is cancelled every process of the run is gone before `cancelled` is written.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launcher import dependencies
from launcher.attempts import grace_warning, preflight_failures, record_end, requeue_fields
from launcher.config import load_resolved
from launcher.events import Event, Preempted
from launcher.lifecycle import starts, this_attempt
from launcher.processes import processes_of, wait_gone
from launcher.records import Plan
from launcher.rundir import RunDir
from launcher.stalls import HEARTBEAT_S, find_stall, record_stall
from launcher.stragglers import find_stragglers, record_stragglers

TERM_GRACE_S = 30.0  # torchrun's own grace before it SIGKILLs its workers
STALL_GRACE_S = 10.0  # a stalled run cannot save (its stop agreement needs the stalled rank): kill soon


def say(text: str) -> None:
    print(f"[launch] {text}", flush=True)


def stop(agents: list[subprocess.Popen], run: RunDir, grace: float) -> None:
    for agent in agents:
        if agent.poll() is None:
            agent.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(a.poll() is None for a in agents) and time.monotonic() < deadline:
        time.sleep(0.2)
    for agent in agents:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    end_leftovers(run, 0.0)  # workers orphaned by an agent that died first


def end_leftovers(run: RunDir, wait_s: float) -> None:
    """No process of an ended attempt outlives it: what is still there after `wait_s` (a rank's
    data-loader workers, an agent's fork server finishing its exit) is SIGKILLed."""
    leftovers = wait_gone(processes_of(run), wait_s)
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_gone(leftovers, 10)


def spawn(plan: Plan) -> list[subprocess.Popen]:
    return [subprocess.Popen(node.argv, env={**os.environ, **node.env}, cwd=plan.workdir or None) for node in plan.nodes]


def main(argv: list[str]) -> int:
    run = RunDir(Path(argv[0]).resolve())
    plan = Plan.from_json(json.loads(run.plan.read_text()))
    cfg = load_resolved(run.config)
    cancelled = False

    def request_cancel(signum: int, frame: Any) -> None:
        nonlocal cancelled
        cancelled = True

    signal.signal(signal.SIGTERM, request_cancel)
    signal.signal(signal.SIGINT, request_cancel)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # The agents inherit "ignore" for the preemption signal: torchrun's agent dies on SIGUSR1 and
    # leaves its workers orphaned. The workers install their own handler at start.
    preempt_signum = getattr(signal, f"SIG{cfg.cluster.signal}")
    if preempt_signum != signal.SIGTERM:
        signal.signal(preempt_signum, signal.SIG_IGN)

    why_not = dependencies.wait(run, lambda: cancelled, say)  # launch submit --after
    if cancelled:
        run.add_event(Event.CANCELLED, elapsed_s=0.0)
        say(f"run {run.run_id} cancelled before it started")
        return 0
    if why_not:
        run.add_event(Event.FAILED, exit_code=1, rank=None, error=why_not)
        say(f"run {run.run_id} {why_not}")
        return 1
    first_start = time.time()
    for attempt in itertools.count():
        start = time.time()
        run.add_event(Event.STARTED, backend="local", pid=os.getpid(), host=socket.gethostname(), attempt=attempt,
                      restart_count=starts(run.history()), t=round(start, 3))
        say(f"run {run.run_id}: {len(plan.nodes)} torchrun agent(s), logs in {run.logs}"
            + (f" (attempt {attempt + 1})" if attempt else ""))
        agents = spawn(plan)
        next_look = time.time() + HEARTBEAT_S
        seen: set[int] = set()  # this attempt's ranks recorded as stragglers
        excluded: set[str] = set()  # and nodes recorded bad for it
        while True:
            codes = [a.poll() for a in agents]
            if time.time() >= next_look:  # heartbeats: a rank without progress for job.stall_timeout_s
                next_look = time.time() + HEARTBEAT_S
                beats = run.read_heartbeats()
                for line in record_stragglers(run, find_stragglers(beats, start, cfg.job.straggler_factor), seen,
                                cfg.job.straggler_exclude_factor, excluded):
                    say(line)
                found = find_stall(beats, time.time(), start, cfg.job.stall_timeout_s, cfg.job.first_step_timeout_s)
                if found is not None:
                    say(record_stall(run, found, cfg.job.stall_timeout_s, cfg.job.first_step_timeout_s))
                    stop(agents, run, STALL_GRACE_S)
                    break
            if cancelled:
                say("cancel requested: stopping the ranks (they save a checkpoint first)")
                stop(agents, run, TERM_GRACE_S)
                break
            if all(c is not None for c in codes):
                break
            bad = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                say(f"node {bad[0]}'s torchrun exited with {codes[bad[0]]}: stopping the other nodes")
                stop(agents, run, 15.0)
                break
            time.sleep(0.2)
        codes = [a.wait() for a in agents]
        end_leftovers(run, 5.0)
        elapsed = round(time.time() - first_start, 1)
        if cancelled:
            run.add_event(Event.CANCELLED, elapsed_s=elapsed)
            say(f"run {run.run_id} cancelled after {elapsed} s")
            return 0
        preempted = [e for e in this_attempt(run.history()) if isinstance(e, Preempted)]
        if preempted and all(c == 0 for c in codes):
            # As SLURM would requeue the job: start the same ranks again; they resume.
            run.add_event(Event.REQUEUED, **requeue_fields(preempted[-1]))
            say(f"run {run.run_id} preempted at step {preempted[-1].step}: restarting")
            warning = grace_warning(run.history(), cfg.cluster.signal_grace_s)
            if warning:
                say(f"warning: {warning}")
            continue
        exit_code = next((c for c in codes if c != 0), 0)
        # a node that failed its pre-flight check fails again: locally there is no other node to use
        restart_on = "never" if preflight_failures(run, start) else cfg.job.restart_on
        ending = record_end(run, exit_code, start, elapsed, restart_on, cfg.job.max_restarts,
                            max_identical_failures=cfg.job.max_identical_failures)
        say(f"run {run.run_id} {ending.summary}")
        if ending.restarting:  # it resumes from its newest complete checkpoint
            continue
        return 0 if ending.finished else 1
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
