"""`python -m launcher.backends.supervisor RUN_DIR`: runs and watches a local run's torchrun agents.

It records started / finished / failed / cancelled in `events.jsonl`. When one agent fails the
others are stopped (they would otherwise wait in a collective until the timeout), and when the
run is cancelled every process of the run is gone before `cancelled` is written.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launcher.backends.local import processes_of, wait_gone
from launcher.backends.outcome import record_end
from launcher.rundir import RunDir

TERM_GRACE_S = 30.0  # torchrun's own grace before it SIGKILLs its workers


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
    leftovers = processes_of(run)  # workers orphaned by an agent that died first
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_gone(leftovers, 10)


def main(argv: list[str]) -> int:
    run = RunDir(Path(argv[0]).resolve())
    plan = json.loads(run.plan.read_text())
    cancelled = False
    agents: list[subprocess.Popen] = []

    def request_cancel(signum: int, frame: Any) -> None:
        nonlocal cancelled
        cancelled = True

    signal.signal(signal.SIGTERM, request_cancel)
    signal.signal(signal.SIGINT, request_cancel)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)

    start = time.time()
    run.add_event("started", backend="local", pid=os.getpid(), host=socket.gethostname())
    nodes = plan["nodes"]
    say(f"run {run.run_id}: {len(nodes)} torchrun agent(s), logs in {run.logs}")
    for node in nodes:
        agents.append(subprocess.Popen(node["argv"], env={**os.environ, **node["env"]}, cwd=plan["workdir"] or None))

    while True:
        codes = [a.poll() for a in agents]
        if cancelled:
            say("cancel requested: stopping the ranks")
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
    elapsed = round(time.time() - start, 1)
    if cancelled:
        run.add_event("cancelled", elapsed_s=elapsed)
        say(f"run {run.run_id} cancelled after {elapsed} s")
        return 0
    exit_code = next((c for c in codes if c != 0), 0)
    finished, summary = record_end(run, exit_code, start, elapsed)
    say(f"run {run.run_id} {summary}")
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
