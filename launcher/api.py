"""launch's Python API, for notebooks and pipelines: what the commands do, as a `Run` object.

    import launcher
    run = launcher.submit("jobs/mnist.toml", procs=2, set={"trainer.max_epochs": 3})
    final = run.wait()                  # the typed RunStatus, once the run has ended
    rows = run.metrics()                # metrics.csv, one dict a row

Imports no torch (the ranks do); user mistakes raise `launcher.LaunchError` with the CLI's text.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from launcher import backends, config
from launcher.errors import LaunchError
from launcher.lifecycle import RunStatus
from launcher.rundir import RunDir, find_run, list_runs
from launcher.submission import log_path, resolve_submission, resume_stopped, runs_dir_for, start_run

PathLike = str | os.PathLike[str]


class Run:
    """One run, attached by its directory or its id (`job/run-id` or `run-id` under `runs_dir`)."""

    def __init__(self, path_or_id: PathLike | RunDir, runs_dir: PathLike | None = None) -> None:
        self._run = path_or_id if isinstance(path_or_id, RunDir) else find_run(str(path_or_id), runs_dir_for(runs_dir))

    @property
    def dir(self) -> Path:
        return self._run.path

    @property
    def id(self) -> str:
        return self._run.run_id

    @property
    def job(self) -> str:
        return self._run.job_name

    def __repr__(self) -> str:
        return f"Run({str(self.dir)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Run) and other.dir == self.dir

    def __hash__(self) -> int:
        return hash(self.dir)

    def status(self) -> RunStatus:
        """What `launch status` shows: state, step, epoch, restarts, metrics, error."""
        return backends.status(self._run)

    def wait(self, timeout: float | None = None, poll: float = 1.0) -> RunStatus:
        """Block until the run has ended (completed, failed, cancelled; through any preemptions and
        restarts on the way) and return its final status. TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            info = self.status()
            if info.over:
                return info
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"{self.dir}: still {info.state} at step {info.global_step} after {timeout} s")
            time.sleep(poll)

    def logs(self, rank: int | None = None) -> str:
        """The run's console (every rank's lines, as `launch logs` prints them), or one rank's log."""
        try:
            return log_path(self._run, rank).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def metrics(self) -> list[dict[str, int | float | str | None]]:
        """The rows of metrics.csv, each a dict: integers and floats as numbers, an empty cell None."""
        return [{key: _number(value) for key, value in row.items()} for row in self._run.read_metrics()]

    def preempt(self) -> str:
        """Send the profile's preemption signal (what `launch preempt` does); returns what was done."""
        cfg = config.load_resolved(self._run.config)
        return backends.for_run(self._run).signal(self._run, cfg.cluster.signal)

    def cancel(self) -> RunStatus:
        """Stop the run (a checkpoint is saved first where it trains); returns once it has stopped."""
        backends.for_run(self._run).cancel(self._run)
        return self.status()

    def resume(self, *, code: str = "snapshot", nodes: int | None = None, procs: int | None = None,
               gpus: int | None = None) -> Run:
        """Continue a stopped run from its newest checkpoint (`launch resume`); `code="current"`
        runs the submit directory's code instead of the run's snapshot; nodes/procs/gpus reshape it."""
        if code not in ("snapshot", "current"):
            raise LaunchError(f"resume: code={code!r}: allowed: 'snapshot', 'current'")
        resume_stopped(self._run, code, nodes, procs, gpus)
        return self


def submit(job: PathLike, *, cluster: str | None = None, nodes: int | None = None, gpus: int | None = None,
           procs: int | None = None, set: Mapping[str, Any] | None = None,  # noqa: A002 (the CLI's --set)
           runs_dir: PathLike | None = None, after: Sequence[Run | PathLike] | None = None,
           cluster_file: PathLike | None = None, args: Sequence[str] | None = None) -> Run:
    """`launch submit JOB`: start a run of a job file, a LightningCLI config naming its classes
    (`config.yaml`) or a Lightning script (`train.py`, with its command-line `args`) and return it
    at once (`Run.wait()` waits).

    `set` holds dotted keys (`{"trainer.max_epochs": 3}`) as `--set` does; `after` holds runs (or
    their ids, with an optional `:ok` / `:any`) this one waits for."""
    overrides = tuple(f"{key}={_toml(key, value)}" for key, value in (set or {}).items())
    req = config.Request(job_file=str(job), cluster=cluster, cluster_file=str(cluster_file) if cluster_file else None,
                         nodes=nodes, gpus=gpus, procs=procs, overrides=overrides,
                         script_args=tuple(args) if args is not None else None)
    refs = [str(a.dir) if isinstance(a, Run) else str(a) for a in after or ()]
    cfg, where, afters = resolve_submission(req, runs_dir, refs)
    run = start_run(cfg, where, str(job), **({"after": [a.record() for a in afters]} if afters else {}))
    return Run(run)


def runs(runs_dir: PathLike | None = None) -> list[Run]:
    """Every run under the runs directory (`launch runs`), oldest first."""
    return [Run(r) for r in list_runs(runs_dir_for(runs_dir))]


def _toml(key: str, value: Any) -> str:
    """A Python value as the TOML literal `--set KEY=VALUE` reads."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(key, v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{json.dumps(str(k))} = {_toml(key, v)}" for k, v in value.items()) + " }"
    raise LaunchError(f"set: {key}: {value!r} ({type(value).__name__}) is not a value a job file can hold "
                      "(allowed: bool, int, float, str, list, dict)")


def _number(cell: str | None) -> int | float | str | None:
    if cell is None or cell == "":
        return None
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        return float(cell)
    except ValueError:
        return cell
