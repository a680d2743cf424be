"""The local backend: a detached supervisor process runs the torchrun agent(s) of a run.

The supervisor (launcher/entry/supervisor.py) is its own session leader, so `launch submit` can
return at once, and a closed terminal does not take the run with it. `launch cancel` sends it
SIGTERM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from launcher import render
from launcher.backends.base import ANYWHERE, Placement
from launcher.config.schema import JobConfig
from launcher.errors import LaunchError
from launcher.lifecycle import Probe, State
from launcher.processes import pid_runs, processes_of, supervisor_pid, wait_gone  # noqa: F401 - processes_of: tests use it here
from launcher.records import AliveMarker, LocalProbeDetails, Plan, PlanNode
from launcher.rundir import RunDir, atomic_write_text

SUPERVISOR_MODULE = "launcher.entry.supervisor"
CANCEL_WAIT_S = 60.0


class LocalBackend:
    name = "local"
    arrays = False

    def submit(self, cfg: JobConfig, run: RunDir, placement: Placement = ANYWHERE) -> None:
        if placement != ANYWHERE:
            raise LaunchError("the local backend runs on this machine: it cannot exclude nodes or run inside an "
                              "allocation (use a SLURM profile)")
        plan = Plan(cfg.run.workdir, [PlanNode(c.node, list(c.argv), dict(c.env)) for c in render.local_commands(cfg)])
        atomic_write_text(run.plan, plan.dumps(indent=1))
        with open(run.console, "ab") as console:
            proc = subprocess.Popen(
                [sys.executable, "-m", SUPERVISOR_MODULE, str(run.path)],
                cwd=cfg.run.workdir or None,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        atomic_write_text(run.supervisor_pid, f"{proc.pid}\n")

    def submit_many(self, cfgs: list[JobConfig], runs: list[RunDir], folder: Path) -> str:
        raise LaunchError("the local backend runs one run at a time (a sweep runs its points one after another)")

    def probe(self, run: RunDir) -> Probe:
        pid = supervisor_pid(run)
        return Probe(alive=pid is not None and pid_runs(pid, run),
                     ended_as=(State.FAILED, "the run's supervisor is gone without recording an end (killed?)"),
                     details=LocalProbeDetails(supervisor_pid=pid))

    def probe_many(self, runs: list[RunDir]) -> list[Probe]:
        return [self.probe(run) for run in runs]

    def still_running(self, run: RunDir) -> bool:
        """The supervisor, or any rank of the run (one orphaned by a killed supervisor), still runs."""
        return self.probe(run).alive or bool(processes_of(run))

    def cancel(self, run: RunDir) -> str | None:
        pid = supervisor_pid(run)
        if pid is None or not pid_runs(pid, run):
            raise LaunchError(f"{run.path}: not running (no live supervisor)")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while self.still_running(run) and time.monotonic() < deadline:
            time.sleep(0.2)
        return None

    def signal(self, run: RunDir, signal_name: str) -> str:
        """Send the preemption signal to every process of the run, as SLURM signals a job step.

        Only while ranks run: between two attempts (or before the first rank starts) only the
        supervisor and torchrun's agent exist, and they ignore the signal, so it would be lost.
        """
        if not self.still_running(run):
            raise LaunchError(f"{run.path}: not running")
        pids = processes_of(run)
        if not set(rank_pids(run)) & set(pids):
            raise LaunchError(f"{run.path}: no rank is running yet (the run is starting, or restarting between two "
                              "attempts); the signal would be lost: try again in a few seconds")
        signum = getattr(signal, f"SIG{signal_name}")
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        return f"sent SIG{signal_name} to {len(pids)} process(es) of the run"

    def logs(self, run: RunDir) -> Path:
        return run.console


def rank_pids(run: RunDir) -> list[int]:
    """The ranks running now, from their alive markers (written at each rank's start)."""
    markers = (AliveMarker.read(path) for path in run.errors.glob("rank-*.alive"))
    return [int(m.pid) for m in markers if m is not None and m.pid is not None]


__all__ = ["LocalBackend", "processes_of", "supervisor_pid", "wait_gone"]
