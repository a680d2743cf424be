"""Making a run: its directory, its frozen config and script, and handing it to its backend."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

from launcher import backends, code_snapshot, config, dependencies, render
from launcher.backends.base import ANYWHERE, Placement
from launcher.badnodes import bad_nodes
from launcher.config import JobConfig
from launcher.config.components import job_components
from launcher.errors import LaunchError
from launcher.lifecycle import Event, State
from launcher.rundir import RunDir, atomic_write_text
from launcher.slurm_env import Allocation


def render_script(cfg: JobConfig, array: bool = False) -> str:
    """What the run executes: the local commands, or the SLURM batch script."""
    return render.render_local(cfg) if cfg.cluster.backend == "local" else render.render_sbatch(cfg, array)


def render_preview(cfg: JobConfig, runs_dir: Path, job_file: str) -> str:
    """The script for a run not made yet (its directory shown as RUN-ID)."""
    placeholder = (runs_dir / cfg.job.name / "RUN-ID").resolve()
    return render_script(config.finalize(cfg, placeholder, "RUN-ID", job_file))


def prepare_run(cfg: JobConfig, runs_dir: Path, job_file: str, array: bool = False,
                **event_fields: Any) -> tuple[JobConfig, RunDir]:
    """Make the run directory and freeze the config and the script into it."""
    run = RunDir.create(runs_dir, cfg.job.name)
    cfg = config.finalize(cfg, run.path, run.run_id, job_file)
    atomic_write_text(run.config, config.dumps(cfg))
    atomic_write_text(run.script(cfg.cluster.backend), render_script(cfg, array))
    if cfg.job.snapshot_code:
        taken = take_snapshot(cfg, run)
        event_fields["code"] = {"packages": taken["packages"], "files": len(taken["files"])}
    run.add_event(Event.SUBMITTED, backend=cfg.cluster.backend, profile=cfg.run.profile, world_size=cfg.world_size,
                  **event_fields)
    return cfg, run


def take_snapshot(cfg: JobConfig, run: RunDir) -> dict[str, object]:
    """The job's code (its classes' modules, or its script, and what they import from the submit
    directory) copied into the run, at submit and by `launch resume --code current`."""
    return code_snapshot.take(Path(cfg.run.workdir), {key: comp.class_path for _, key, comp in job_components(cfg)},
                              run.code, script=cfg.job.script)


def fit_allocation(cfg: JobConfig, alloc: Allocation) -> JobConfig:
    """`--here`: the job must fit the allocation this shell is in (SLURM's own figures); a rank's
    CPUs, unless the job says, are the allocation's per node shared by its ranks."""
    if cfg.cluster.backend != "slurm":
        raise LaunchError(f"--here needs a SLURM profile (--cluster NAME); '{cfg.run.profile}' is {cfg.cluster.backend}")
    res = cfg.resources
    if res.nodes > alloc.nodes:
        raise LaunchError(f"--here: the job asks {res.nodes} nodes; allocation {alloc.job_id} has {alloc.nodes} "
                          "(SLURM_JOB_NUM_NODES)")
    if res.gpus_per_node and res.gpus_per_node > (alloc.gpus_per_node or 0):
        raise LaunchError(f"--here: the job asks {res.gpus_per_node} GPUs per node; allocation {alloc.job_id} has "
                          f"{alloc.gpus_per_node or 0} (SLURM_GPUS_ON_NODE)")
    tasks = cfg.procs_per_node
    if res.cpus_per_task and alloc.cpus_per_node and res.cpus_per_task * tasks > alloc.cpus_per_node:
        raise LaunchError(f"--here: {tasks} task(s) x {res.cpus_per_task} CPUs per node exceed the "
                          f"{alloc.cpus_per_node} CPUs of allocation {alloc.job_id} (SLURM_JOB_CPUS_PER_NODE)")
    if res.cpus_per_task is None and alloc.cpus_per_node:
        if alloc.cpus_per_node < tasks:
            raise LaunchError(f"--here: {tasks} task(s) per node, but allocation {alloc.job_id} has "
                              f"{alloc.cpus_per_node} CPU(s) per node (SLURM_JOB_CPUS_PER_NODE)")
        res = dataclasses.replace(res, cpus_per_task=alloc.cpus_per_node // tasks)
    return dataclasses.replace(cfg, resources=res)


def runs_dir_for(explicit: str | os.PathLike[str] | None, cfg: JobConfig | None = None) -> Path:
    """Where runs live: the one asked for, else $LAUNCH_RUNS_DIR, else the profile's, else ./runs."""
    if explicit:
        return Path(explicit)
    if os.environ.get("LAUNCH_RUNS_DIR"):
        return Path(os.environ["LAUNCH_RUNS_DIR"])
    if cfg is not None and cfg.cluster.runs_dir:
        return Path(cfg.cluster.runs_dir)
    return Path("runs")


def resolve_submission(req: config.Request, runs_dir: str | os.PathLike[str] | None, after: list[str],
                       alloc: Allocation | None = None) -> tuple[JobConfig, Path, list[dependencies.After]]:
    """The config a submission runs (fitted to `alloc` for --here, held for the runs in `after`),
    and its runs directory."""
    cfg = config.resolve(req)
    if alloc is not None:
        cfg = fit_allocation(cfg, alloc)
    where = runs_dir_for(runs_dir, cfg)
    afters = dependencies.parse(after, where)
    if afters:
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dependency=dependencies.slurm_dependency(cfg, afters)))
    return cfg, where, afters


def start_run(cfg: JobConfig, runs_dir: Path, job_file: str, here: str | None = None, **event_fields: Any) -> RunDir:
    """Prepare the run directory and hand the run to its backend (or, `here`, to srun steps of
    that allocation)."""
    if here:
        event_fields["here"] = here
    cfg, run = prepare_run(cfg, runs_dir, job_file, **event_fields)
    try:
        # --here runs inside this shell's SLURM allocation, whatever the profile's backend
        backend = backends.named("slurm" if here else cfg.cluster.backend)
        backend.submit(cfg, run, Placement(inside=here))
    except LaunchError:
        shutil.rmtree(run.path, ignore_errors=True)  # nothing ran: leave no half-made run behind
        raise
    return run


def reshape(cfg: JobConfig, shape: dict[str, int]) -> JobConfig:
    """The run's config on another number of nodes / ranks per node (`launch resume --nodes --procs
    --gpus`). The world sizes must divide one another: the global batch is kept by scaling each
    rank's batch (checked against the batch size when the ranks start)."""
    res = cfg.resources
    if "gpus_per_node" in shape and not res.gpus_per_node:
        raise LaunchError("--gpus: this run trains on CPU processes; use --procs")
    if "procs_per_node" in shape and res.gpus_per_node:
        raise LaunchError("--procs: this run trains on GPUs (one rank per GPU); use --gpus")
    for key, value in shape.items():
        if value < 1:
            raise LaunchError(f"--{key.split('_')[0]}: {value}: must be at least 1")
    new = dataclasses.replace(cfg, resources=dataclasses.replace(res, **shape))
    old_w, new_w = cfg.world_size, new.world_size
    if max(old_w, new_w) % min(old_w, new_w):
        raise LaunchError(f"resume on {new_w} ranks: the run trained on {old_w}, and one world size must divide the "
                          "other (each rank's batch is scaled to keep the global batch)")
    if new.cluster.max_nodes is not None and new.resources.nodes > new.cluster.max_nodes:
        raise LaunchError(f"--nodes {new.resources.nodes}: profile '{cfg.run.profile}' allows at most "
                          f"{new.cluster.max_nodes}")
    return new


def log_path(run: RunDir, rank: int | None = None) -> Path:
    """The run's console (every rank's lines), or one rank's log, which must exist."""
    if rank is None:
        return backends.for_run(run).logs(run)
    path = run.rank_log(rank)
    if not path.exists():
        have = sorted(p.stem.removeprefix("rank-") for p in run.logs.glob("rank-*.log"))
        raise LaunchError(f"{run.path}: no log for rank {rank} (ranks with logs: {', '.join(have) or 'none yet'})")
    return path


def resume_stopped(run: RunDir, code: str = "snapshot", nodes: int | None = None, procs: int | None = None,
                   gpus: int | None = None) -> tuple[JobConfig, list[str]]:
    """`launch resume`: refuse a run that still runs or has completed, else resume it (resume_run),
    on another shape where nodes, procs or gpus are given."""
    shape = {k: v for k, v in (("nodes", nodes), ("procs_per_node", procs), ("gpus_per_node", gpus)) if v is not None}
    info = backends.status(run)
    if backends.for_run(run).still_running(run):
        if info.terminal:  # recorded as ended, but the cluster still shows its job
            raise LaunchError(f"{run.path}: {info.state}, but its job is still ending (SLURM state "
                              f"{info.slurm.slurm_state}); try again once it has left the queue")
        raise LaunchError(f"{run.path}: still {info.state}; cancel it first or let it finish")
    if info.state == State.COMPLETED:
        raise LaunchError(f"{run.path}: already completed")
    return resume_run(run, info.state, code, shape)


def resume_run(run: RunDir, previous_state: str, code: str = "snapshot",
               shape: dict[str, int] | None = None) -> tuple[JobConfig, list[str]]:
    """Hand a stopped run to its backend again, from its frozen config (a fresh rendezvous port
    locally: the old one may be taken by now), recording the request; with code "current", the
    submit directory's code replaces the run's snapshot first; with a shape, on another number of
    nodes or ranks (the config and script are frozen again). Returns the config and the files of
    the snapshot that changed."""
    cfg = config.load_resolved(run.config)
    fields: dict[str, Any] = {}
    new = reshape(cfg, shape) if shape else cfg
    if new != cfg:
        fields.update(world_size=new.world_size, world_size_before=cfg.world_size)
        cfg = new
        atomic_write_text(run.config, config.dumps(cfg))
        atomic_write_text(run.script(cfg.cluster.backend), render_script(cfg))
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, dependency=""))  # it waited once: --after is done
    if cfg.cluster.backend == "local":
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, rdzv_port=config.free_port()))
    edited: list[str] = []
    if code == "current":
        before = code_snapshot.manifest(run.code)
        edited = code_snapshot.changed(before, take_snapshot(cfg, run))
        fields.update(code="current", code_changed=edited[:100])
    elif run.code.is_dir():
        fields["code"] = "snapshot"
    run.add_event(Event.RESUME_REQUESTED, previous_state=previous_state, **fields)
    backend = backends.for_run(run)
    bad = bad_nodes(run.history()) if backend.name == "slurm" else {}  # nodes that failed the run before
    backend.submit(cfg, run, Placement(exclude=tuple(bad)) if bad else ANYWHERE)
    return cfg, edited
