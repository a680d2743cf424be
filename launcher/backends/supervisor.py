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
from launcher.rundir import RunDir

TERM_GRACE_S = 30.0  # torchrun's own grace before it SIGKILLs its workers


def say(text: str) -> None:
    print(f"[launch] {text}", flush=True)


def first_error(run: RunDir, since: float) -> dict[str, Any] | None:
    """The earliest rank failure of this attempt: the cause; later ones are usually its echo."""
    records = []
    for path in run.errors.glob("rank-*.json"):
        try:
            if path.stat().st_mtime + 1 < since:
                continue
            records.append((path.stat().st_mtime, json.loads(path.read_text())))
        except (OSError, json.JSONDecodeError):
            continue
    return min(records, key=lambda r: r[0])[1] if records else None


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

    failed_agent = None
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
            failed_agent = bad[0]
            say(f"node {failed_agent}'s torchrun exited with {codes[failed_agent]}: stopping the other nodes")
            stop(agents, run, 15.0)
            break
        time.sleep(0.2)

    codes = [a.wait() for a in agents]
    elapsed = round(time.time() - start, 1)
    if cancelled:
        run.add_event("cancelled", elapsed_s=elapsed)
        say(f"run {run.run_id} cancelled after {elapsed} s")
        return 0
    trained = [e for e in run.read_events() if e.get("event") == "trained"]
    if all(c == 0 for c in codes) and trained and not trained[-1].get("interrupted"):
        last = trained[-1]
        run.add_event("finished", elapsed_s=elapsed, global_step=last.get("global_step"))
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(last.get("metrics", {}).items()))
        say(f"run {run.run_id} completed in {elapsed} s: step {last.get('global_step')}, {shown}")
        return 0
    err = first_error(run, start)
    exit_code = next((c for c in codes if c != 0), 1)
    if err:
        message = f"rank {err['rank']} ({err.get('host', '?')}): {err['type']}: {err['message']}"
    elif all(c == 0 for c in codes):
        message = "the ranks exited without completing training"
    else:
        message = f"torchrun exited with {exit_code}; see {run.logs}"
    run.add_event("failed", elapsed_s=elapsed, exit_code=exit_code, rank=err["rank"] if err else None, error=message)
    say(f"run {run.run_id} failed after {elapsed} s: {message}")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
