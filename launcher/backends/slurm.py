"""The SLURM backend: one submission path (sbatch --hold of the rendered script, then release);
state from squeue/scontrol and events.jsonl.

The batch script is ours (render.render_sbatch), so that what is submitted is exactly what
`launch render` prints; submitit's own script generator cannot express the torchrun mode, the
profile's signal, or the event hooks around srun. submitit does what it is good at: the job
folder's layout, the pickled call every task runs (submitit_compat.dump_task), per-task stdout
files. A job, a job array and a replacement job without a lost node are all submitted held, and
released once every task's pickled call is in place.
sacct is never used: it fails on clusters without accounting storage.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from launcher import render, submitit_compat
from launcher.backends.base import ANYWHERE, Placement
from launcher.config.schema import JobConfig
from launcher.errors import LaunchError
from launcher.lifecycle import STATE_OF_EVENT, TERMINAL_STATES, Event, Probe, State
from launcher.processes import pid_runs
from launcher.records import SlurmJob, SlurmProbeDetails
from launcher.rundir import RunDir, atomic_write_text
from launcher.slurm_env import job_detail, node_states, queue_row, queue_rows

ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}
TASK_MODULE = "launcher.entry.slurm_task"  # what every task runs: a rank, or a node's torchrun agent
HERE_MODULE = "launcher.entry.here"  # launch submit --here: runs the batch script inside an allocation
CANCEL_WAIT_S = 60.0


class EntryPoint:
    """A function launch runs on the nodes, named rather than imported (backends never import
    entry/ or runtime/). It pickles as a reference to the function itself, which the task imports."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __reduce__(self) -> tuple[Any, ...]:
        return getattr, (_ModuleRef(self.module), self.name)

    def __call__(self, *args: Any) -> Any:
        return getattr(importlib.import_module(self.module), self.name)(*args)


class _ModuleRef:
    def __init__(self, module: str) -> None:
        self.module = module

    def __reduce__(self) -> tuple[Any, ...]:
        return importlib.import_module, (self.module,)


def task_entry(cfg: JobConfig) -> EntryPoint:
    """The call submitit runs in each task: a rank (srun mode) or a node's torchrun agent."""
    return EntryPoint(TASK_MODULE, "run_rank" if cfg.cluster.launch_mode == "srun" else "run_node")


def require_tools(cfg: JobConfig) -> None:
    for tool in ("sbatch", "srun", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            raise LaunchError(f"profile '{cfg.run.profile}' uses SLURM but '{tool}' is not on PATH (run on a login node)")


def slurm_record(run: RunDir) -> SlurmJob | None:
    """The run's slurm.json (None before the job was submitted)."""
    return SlurmJob.read(run.slurm_record)


def job_id(run: RunDir) -> str | None:
    record = slurm_record(run)
    return record.job_id if record else None


def job_and_runner(run: RunDir) -> tuple[str | None, int | None]:
    """The job id, and the runner's pid of a run started with `launch submit --here` (None for a
    batch job): one read of slurm.json."""
    record = slurm_record(run)
    return (record.job_id, record.here_runner_pid) if record else (None, None)


QUEUED = {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD"}  # SLURM has not started it (again) yet
STARTED = {"RUNNING", "SUSPENDED", "STOPPED", "SIGNALING", "RESIZING"}


def slurm_state(jid: str) -> tuple[str | None, str]:
    """(state, node list) of the job: from squeue, else scontrol (finished jobs stay there for MinJobAge)."""
    state, nodes = queue_row(jid)
    return (state, nodes) if state else (_scontrol_state(jid), "")


def lost_completing(state: str | None, nodes: str) -> list[str]:
    """The nodes a COMPLETING job still waits for, if none of them answers (every one not
    responding or down): its processes elsewhere are gone and those nodes run nothing, yet SLURM
    keeps the job until it declares them DOWN (SlurmdTimeout, 300 s by default). To launch such a
    job has ended: it can be resumed at once. Empty otherwise."""
    if state != "COMPLETING" or not nodes:
        return []
    states = node_states(nodes)
    if not states or not all(s.endswith("*") or s.startswith("down") for s in states.values()):
        return []
    return sorted(states)


def _scontrol_state(jid: str) -> str | None:
    return job_detail(jid).get("JobState")


def explain_end(state: str | None, lost: list[str] | None = None) -> tuple[State, str]:
    """(our state, why) for a job that is gone from the queue without recording its end."""
    if lost:
        return State.FAILED, (f"the job ended without recording its end: SLURM still shows it COMPLETING on "
                              f"{', '.join(lost)}, which do(es) not answer (a lost node)")
    if state == "CANCELLED":
        return State.CANCELLED, "cancelled outside launch (scancel)"
    if state == "TIMEOUT":
        return State.FAILED, "the job reached its time limit"
    return State.FAILED, f"the job ended without recording its end (SLURM state {state or 'unknown'})"


def _probe(jid: str | None, state: str | None, nodes: str = "") -> Probe:
    lost = lost_completing(state, nodes)
    details = SlurmProbeDetails(slurm_job_id=jid, slurm_state=state, completing_on_lost_nodes=lost or None)
    scheduler = State.PENDING if state in QUEUED else State.RUNNING if state in STARTED else None
    return Probe(alive=state in ACTIVE and not lost, ended_as=explain_end(state, lost), details=details,
                 scheduler_state=scheduler)


def _recorded_end(run: RunDir) -> bool:
    """Whether the run's own history already says it ended (no need to ask scontrol why)."""
    state = None
    for ev in run.history():
        state = STATE_OF_EVENT.get(ev.event, state)
    return state in TERMINAL_STATES


def sbatch_held(script: Path, exclude: Sequence[str] = (), what: str = "the job") -> str:
    """Submit a rendered batch script on hold (it waits for `release`): its job id. The one way
    launch submits to SLURM: the script is exactly what `launch render` prints (`--exclude` goes on
    sbatch's command line), and no task starts before the call it runs is in place."""
    out = subprocess.run(["sbatch", "--parsable", "--hold", *([f"--exclude={','.join(exclude)}"] if exclude else []),
                          str(script)], capture_output=True, text=True)
    if out.returncode != 0:
        raise LaunchError(f"sbatch refused {what}: {' '.join((out.stderr or out.stdout).split())[:500]}")
    return out.stdout.strip().split(";")[0]


def release(job_id: str, prepare: Callable[[], None]) -> None:
    """`prepare` (the pickled calls, the records), then let the held job start; cancel it if either fails."""
    try:
        prepare()
        subprocess.run(["scontrol", "release", job_id], check=True, capture_output=True, text=True)
    except BaseException:
        subprocess.run(["scancel", job_id], capture_output=True)
        raise


class SlurmBackend:
    name = "slurm"
    arrays = True

    def submit(self, cfg: JobConfig, run: RunDir, placement: Placement = ANYWHERE) -> None:
        require_tools(cfg)
        if placement.inside:
            self._start_here(cfg, run, placement.inside)
            return
        exclude = placement.exclude
        run.submitit.mkdir(exist_ok=True)
        script = run.submitit / f".submission-{os.getpid()}.sh"
        atomic_write_text(script, render.render_sbatch(cfg))  # what `launch render` prints, fresh (a resume's too)
        refused = None
        try:
            try:
                jid = sbatch_held(script, exclude)
            except LaunchError as err:
                if not exclude:
                    raise
                # too few nodes left without them (or a node SLURM no longer knows): run anyway
                refused, exclude = f"{err} (excluding {','.join(exclude)})"[:300], ()
                jid = sbatch_held(script)
        except LaunchError:
            script.unlink(missing_ok=True)
            raise

        def before_release() -> None:
            script.replace(run.submitit / f"{jid}_submission.sh")  # where submitit keeps a job's script
            submitit_compat.dump_task(task_entry(cfg), cfg.run.dir, run.submitit / f"{jid}_submitted.pkl")
            atomic_write_text(run.slurm_record, SlurmJob(jid).dumps())
            run.add_event(Event.QUEUED, slurm_job_id=jid, **({"excluded_nodes": list(exclude)} if exclude else {}),
                          **({"exclusion_refused": refused} if refused else {}))

        release(jid, before_release)

    def submit_many(self, cfgs: list[JobConfig], runs: list[RunDir], folder: Path) -> str:
        """Submit a sweep's runs as one job array; each run keeps its own directory and job id
        (ARRAYID_INDEX). Held until every task's pickled call is in place, then released."""
        require_tools(cfgs[0])
        script = folder / "array.sbatch"
        atomic_write_text(script, render.render_sbatch_array(cfgs, str(folder)))
        array_id = sbatch_held(script, what="the job array")

        def before_release() -> None:
            for i, (cfg, run) in enumerate(zip(cfgs, runs, strict=True)):
                jid = f"{array_id}_{i}"
                run.submitit.mkdir(exist_ok=True)
                submitit_compat.dump_task(task_entry(cfg), cfg.run.dir, run.submitit / f"{jid}_submitted.pkl")
                atomic_write_text(run.slurm_record, SlurmJob(jid, array_job_id=array_id).dumps())
                run.add_event(Event.QUEUED, slurm_job_id=jid)

        release(array_id, before_release)
        return array_id

    def _start_here(self, cfg: JobConfig, run: RunDir, allocation: str) -> None:
        """`launch submit --here`: the run's batch script as srun steps of `allocation` (the one this
        shell is in), under a detached runner (launcher/entry/here.py)."""
        run.submitit.mkdir(exist_ok=True)
        submitit_compat.dump_task(task_entry(cfg), cfg.run.dir, run.submitit / f"{allocation}_submitted.pkl")
        python = cfg.run.launcher_python or cfg.run.python
        with open(run.console, "ab") as out:
            proc = subprocess.Popen([python, "-m", HERE_MODULE, str(run.path)], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=cfg.run.workdir or None)
        atomic_write_text(run.slurm_record, SlurmJob(allocation, here_runner_pid=proc.pid).dumps())

    def probe(self, run: RunDir) -> Probe:
        """One squeue (or scontrol) look at the run's job; for a --here run, also its runner."""
        jid, runner = job_and_runner(run)
        probe = _probe(jid, *(slurm_state(jid) if jid else (None, "")))
        if runner is None:
            return probe
        # the allocation runs whether or not a step of the run does: its state says nothing of the run's
        return Probe(alive=probe.alive and pid_runs(runner, run),
                     ended_as=(State.FAILED, "the --here runner is gone without recording an end (killed, or the "
                                             "allocation ended)"), details=replace(probe.details, here_runner_pid=runner))

    def probe_many(self, runs: list[RunDir]) -> list[Probe]:
        """One squeue call for all the runs; scontrol only for a job gone from the queue whose
        run did not record its end (to say why it ended)."""
        records = [job_and_runner(run) for run in runs]
        ids = [jid for jid, _ in records]
        wanted = sorted({jid for jid in ids if jid})
        if not wanted:
            return [_probe(None, None) for _ in runs]
        rows = queue_rows(wanted)
        if rows is None:  # squeue refused the list: one look a run
            return [self.probe(run) for run in runs]
        queued = {jid: state for jid, (state, _) in rows.items()}
        nodes = {jid: where for jid, (_, where) in rows.items()}
        probes = []
        for run, (jid, runner) in zip(runs, records, strict=True):
            if runner is not None:
                probes.append(self.probe(run))
                continue
            state = queued.get(jid) if jid else None
            if jid and state is None and not _recorded_end(run):
                state = _scontrol_state(jid)
            probes.append(_probe(jid, state, nodes.get(jid, "") if jid else ""))
        return probes

    def still_running(self, run: RunDir) -> bool:
        return self.probe(run).alive

    def cancel(self, run: RunDir) -> str | None:
        jid, runner = job_and_runner(run)
        if jid is None or not self.still_running(run):
            raise LaunchError(f"{run.path}: not running (SLURM job {jid or '?'} is not in the queue)")
        run.add_event(Event.CANCEL_REQUESTED, slurm_job_id=jid)  # so the ranks save but do not requeue
        if runner is not None:  # --here: stop our steps, never the user's allocation
            os.kill(runner, signal.SIGTERM)
            deadline = time.monotonic() + CANCEL_WAIT_S
            while pid_runs(runner, run) and time.monotonic() < deadline:
                time.sleep(0.5)
            return None  # the runner records the end
        subprocess.run(["scancel", jid], check=True)
        deadline = time.monotonic() + CANCEL_WAIT_S
        while (probe := self.probe(run)).alive and time.monotonic() < deadline:
            time.sleep(0.5)
        details = probe.details if isinstance(probe.details, SlurmProbeDetails) else SlurmProbeDetails()
        lost, state = details.completing_on_lost_nodes, details.slurm_state
        run.add_event(Event.CANCELLED, slurm_job_id=jid, **({"completing_on_lost_nodes": lost} if lost else {}))
        if lost:
            return (f"SLURM job {jid} is still COMPLETING on {', '.join(lost)}, which do(es) not answer (a lost node): "
                    "SLURM lets it go once it declares the node DOWN; nothing of the run runs, `launch resume` works now")
        if probe.alive:
            return f"SLURM job {jid} is still {state} after {CANCEL_WAIT_S:.0f} s (its processes are ending)"
        return None

    def signal(self, run: RunDir, signal_name: str) -> str:
        """What the cluster does before preempting: signal every task of the job's steps."""
        jid, runner = job_and_runner(run)
        if jid is None or not self.still_running(run):
            raise LaunchError(f"{run.path}: not running (SLURM job {jid or '?'} is not in the queue)")
        if runner is not None:  # --here: the runner hands it to its srun, which forwards it to the tasks
            os.kill(runner, getattr(signal, f"SIG{signal_name}"))
            return f"kill -{signal_name} {runner} (the --here runner, which forwards it to srun)"
        subprocess.run(["scancel", f"--signal={signal_name}", jid], check=True)
        return f"scancel --signal={signal_name} {jid}"

    def logs(self, run: RunDir) -> Path:
        return run.task_log(job_id(run) or "", 0)
