"""Where runs execute: `local` (torchrun under a detached supervisor) and `slurm` (submitit).

Both implement `backends.base.Backend`; `for_run` picks a run's, and `status` / `statuses` turn
a run's history plus one probe into a `lifecycle.RunStatus`.
"""

from __future__ import annotations

import tomllib

from launcher.backends.base import Backend
from launcher.lifecycle import RunStatus, status_of
from launcher.rundir import RunDir


def backend_name(run: RunDir) -> str:
    try:
        with open(run.config, "rb") as fh:
            return tomllib.load(fh).get("cluster", {}).get("backend", "local")
    except (OSError, tomllib.TOMLDecodeError):
        return "local"


def named(name: str) -> Backend:
    """The backend called `name` (imported lazily: slurm pulls in submitit at submission)."""
    if name == "slurm":
        from launcher.backends.slurm import SlurmBackend

        return SlurmBackend()
    from launcher.backends.local import LocalBackend

    return LocalBackend()


def for_run(run: RunDir) -> Backend:
    """The backend that runs `run`."""
    return named(backend_name(run))


def status(run: RunDir) -> RunStatus:
    """Everything `launch status` shows: the run's own records, checked against its backend."""
    backend = for_run(run)
    return status_of(run, backend.probe(run), backend.name)


def statuses(runs: list[RunDir]) -> list[RunStatus]:
    """`status` of many runs, with one probe call per backend (one squeue for every SLURM run)."""
    by_backend: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        by_backend.setdefault(backend_name(run), []).append(i)
    found: dict[int, RunStatus] = {}
    for name, indices in by_backend.items():
        backend = named(name)
        probes = backend.probe_many([runs[i] for i in indices])
        for i, probe in zip(indices, probes, strict=True):
            found[i] = status_of(runs[i], probe, backend.name)
    return [found[i] for i in range(len(runs))]
