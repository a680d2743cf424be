"""The local backend: a detached supervisor process runs the torchrun agent(s) of a run.

The supervisor is its own session leader, so `launch submit` can return at once, and a closed
terminal does not take the run with it. `launch cancel` sends it SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from launcher import render
from launcher.config import JobConfig, LaunchError
from launcher.rundir import RunDir, atomic_write_text


def submit(cfg: JobConfig, run: RunDir) -> None:
    plan = [
        {"node": c.node, "argv": list(c.argv), "env": dict(c.env)} for c in render.local_commands(cfg)
    ]
    atomic_write_text(run.plan, json.dumps({"workdir": cfg.run.workdir, "nodes": plan}, indent=1))
    with open(run.console, "ab") as console:
        proc = subprocess.Popen(
            [sys.executable, "-m", "launcher.backends.supervisor", str(run.path)],
            cwd=cfg.run.workdir or None,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    atomic_write_text(run.supervisor_pid, f"{proc.pid}\n")


def supervisor_pid(run: RunDir) -> int | None:
    try:
        return int(run.supervisor_pid.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def pid_runs_this(pid: int, run: RunDir) -> bool:
    """True if `pid` is alive and is this run's supervisor (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(run.path).encode() in cmdline


def probe(run: RunDir) -> tuple[bool, dict[str, Any]]:
    """(whether the run's supervisor still runs, what `launch status` shows of it)."""
    pid = supervisor_pid(run)
    return pid is not None and pid_runs_this(pid, run), {"supervisor_pid": pid}


def is_alive(run: RunDir) -> bool:
    """The supervisor, or any rank of the run (one orphaned by a killed supervisor), still runs."""
    return probe(run)[0] or bool(processes_of(run))


def explain_end(details: dict[str, Any]) -> tuple[str, str]:
    """(our state, why) for a run whose supervisor is gone without recording its end."""
    return "failed", "the run's supervisor is gone without recording an end (killed?)"


def cancel(run: RunDir) -> None:
    pid = supervisor_pid(run)
    if pid is None or not pid_runs_this(pid, run):
        raise LaunchError(f"{run.path}: not running (no live supervisor)")
    os.kill(pid, signal.SIGTERM)


def preempt(run: RunDir, signal_name: str) -> str:
    """Send the preemption signal to every process of the run, as SLURM signals a job step."""
    if not is_alive(run):
        raise LaunchError(f"{run.path}: not running")
    signum = getattr(signal, f"SIG{signal_name}")
    pids = processes_of(run)
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
    return f"sent SIG{signal_name} to {len(pids)} process(es) of the run"


def processes_of(run: RunDir) -> list[int]:
    """Every process on this machine started for this run (the ranks carry LAUNCH_RUN_DIR)."""
    needle = f"LAUNCH_RUN_DIR={run.path}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle in environ:
            found.append(int(entry.name))
    return found


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _exists(p)]
    return alive


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def console_path(run: RunDir) -> Path:
    return run.console
