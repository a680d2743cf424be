"""The processes of a local run on this machine: found by the run directory in their environment."""

from __future__ import annotations

import os
import time
from pathlib import Path

from launcher.rundir import RunDir


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


def descendants(pid: int) -> list[int]:
    """Every living process below `pid` on this machine (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def pid_runs(pid: int, run: RunDir) -> bool:
    """True if `pid` is alive and has the run's directory on its command line (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(run.path).encode() in cmdline


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until these processes have exited; the ones still there after `timeout`."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if exists(p)]
    return alive


def exists(pid: int) -> bool:
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


def supervisor_pid(run: RunDir) -> int | None:
    """The pid of a local run's supervisor, from the run directory (None before it wrote it)."""
    try:
        return int(run.supervisor_pid.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
