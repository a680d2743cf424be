"""What a backend is: the one interface the CLI and the sweep use, whatever runs the job."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from launcher.config.schema import JobConfig
from launcher.lifecycle import Probe
from launcher.rundir import RunDir


@dataclass(frozen=True)
class Placement:
    """Where a submission may run, beyond the job's resources."""

    exclude: tuple[str, ...] = ()  # nodes it must not use (lost ones: entry/requeue.replace_job)
    inside: str | None = None  # an allocation this shell is in: run as its srun steps (launch submit --here)


ANYWHERE = Placement()


class Backend(Protocol):
    """Starts, watches and stops runs. Each method takes a run directory made by the CLI."""

    name: str
    arrays: bool  # whether `submit_many` can queue several runs as one job array

    def submit(self, cfg: JobConfig, run: RunDir, placement: Placement = ANYWHERE) -> None:
        """Hand the run to the backend; returns once it is started or queued. A backend that cannot
        honour the placement refuses it with a LaunchError."""

    def submit_many(self, cfgs: list[JobConfig], runs: list[RunDir], folder: Path) -> str:
        """Queue several runs at once (a job array); returns the array's id."""

    def probe(self, run: RunDir) -> Probe:
        """One look at whether the run's supervisor or job is still there."""

    def probe_many(self, runs: list[RunDir]) -> list[Probe]:
        """`probe` for many runs, with as few calls to the cluster as it can (one squeue)."""

    def still_running(self, run: RunDir) -> bool:
        """Anything of the run still runs (resume and follow wait for this to be False)."""

    def cancel(self, run: RunDir) -> str | None:
        """Stop the run (its ranks save a checkpoint first); returns when it has stopped, with a
        note where the cluster still shows something of it."""

    def signal(self, run: RunDir, signal_name: str) -> str:
        """Send the preemption signal to every rank, as the cluster would; says what it did."""

    def logs(self, run: RunDir) -> Path:
        """The run's console: what a terminal would have shown."""
