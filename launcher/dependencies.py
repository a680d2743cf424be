"""`launch submit JOB --after RUN[:ok|:any]`: a run that starts when others have ended.

`ok` (the default): only once RUN completed; `any`: however it ended. On SLURM it is the job's
`--dependency=afterok:ID` / `afterany:ID` (the queue holds the job); locally the run's supervisor
waits before it starts the ranks. The runs waited for are in the `submitted` event, and `launch
status` says what a pending run is waiting for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher import backends
from launcher.config import JobConfig
from launcher.errors import LaunchError
from launcher.events import Started, Submitted
from launcher.lifecycle import State, last_event
from launcher.rundir import RunDir, find_run

CONDITIONS = ("ok", "any")
POLL_S = 1.0


@dataclass(frozen=True)
class After:
    run: RunDir
    when: str  # "ok" or "any"

    def record(self) -> dict[str, str]:
        return {"run_dir": str(self.run.path), "run_id": self.run.run_id, "when": self.when}

    def verdict(self, state: State) -> bool | None:
        """True: satisfied; False: can never be; None: not yet."""
        if state == State.COMPLETED:
            return True
        if state in (State.FAILED, State.CANCELLED, State.UNKNOWN):
            return self.when == "any"
        return None


def parse(refs: list[str], runs_dir: Path) -> list[After]:
    """`--after` values -> the runs, each found like `launch status` finds one."""
    found = []
    for ref in refs:
        name, sep, when = ref.rpartition(":")
        if not sep or when not in CONDITIONS:
            name, when = ref, "ok"
        found.append(After(find_run(name, runs_dir), when))
    return found


def slurm_dependency(cfg: JobConfig, afters: list[After]) -> str:
    """Refuse what can never start; the SLURM `--dependency` value ("" when nothing is left to wait for)."""
    parts = []
    for after in afters:
        info = backends.status(after.run)
        verdict = after.verdict(info.state)
        if verdict is False:
            raise LaunchError(f"--after {after.run.run_id}:{after.when}: that run ended {info.state}, so this one "
                              f"would never start (':any' starts after any end)")
        if cfg.cluster.backend != "slurm" or verdict:
            continue
        if info.backend != "slurm":
            raise LaunchError(f"--after {after.run.run_id}: a SLURM job can wait only for SLURM runs; "
                              f"that one runs on the {info.backend} backend")
        parts.append(f"after{after.when}:{info.slurm.slurm_job_id}")
    return ",".join(parts)


def recorded(run: RunDir) -> list[After]:
    """The runs this one waits for: none once it has started (a resumed run does not wait again)."""
    events = run.history()
    submitted = last_event(events, Submitted)
    if submitted is None or last_event(events, Started) is not None:
        return []
    return [After(RunDir(Path(a.run_dir)), a.when) for a in submitted.dependencies]


def waiting_for(run: RunDir) -> list[str]:
    """What a pending run still waits for, one line each ([] when nothing)."""
    lines = []
    for after in recorded(run):
        state = backends.status(after.run).state
        verdict = after.verdict(state)
        if verdict is None:
            lines.append(f"{after.run.run_id} ({state}) to {'complete' if after.when == 'ok' else 'end'}")
        elif verdict is False:
            lines.append(f"{after.run.run_id}, which ended {state}: this run will never start (launch cancel it)")
    return lines


def wait(run: RunDir, stop: Callable[[], bool], say: Callable[[str], Any]) -> str | None:
    """The local supervisor's wait before it starts a run: None when every run waited for ended as
    asked, else why this run will not start. Returns early (None) when `stop()` says so."""
    afters = recorded(run)
    if afters:
        say("waiting for " + ", ".join(f"{a.run.run_id} ({a.when})" for a in afters))
    while afters and not stop():
        pending = []
        for after in afters:
            state = backends.status(after.run).state
            verdict = after.verdict(state)
            if verdict is False:
                return f"did not start: {after.run.run_id} ended {state} (--after {after.run.run_id}:{after.when})"
            if verdict is None:
                pending.append(after)
        afters = pending
        if afters:
            time.sleep(POLL_S)
    return None
