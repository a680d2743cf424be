"""The SLURM backend: submission through submitit; state from squeue/scontrol and events.jsonl.

submitit does what it is good at: the job folder, the pickled call every task runs, per-task
stdout files and sbatch's job id. The batch script itself is ours (render.render_sbatch), so
that what is submitted is exactly what `launch render` prints; submitit's own script generator
cannot express the torchrun mode, the profile's signal, or the event hooks around srun.
sacct is never used: it fails on clusters without accounting storage.
"""

from __future__ import annotations

import contextlib
import io
import json
import shlex
import shutil
import subprocess
import time
from typing import Any

from launcher import render
from launcher.config import JobConfig, LaunchError
from launcher.rundir import RunDir, atomic_write_text

ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
          "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}


def _executor_class() -> type:
    import submitit

    class LaunchSlurmExecutor(submitit.SlurmExecutor):
        """submitit's executor with our batch script in place of its generated one."""

        script: str = ""
        expected_command: str = ""

        def _make_submission_file_text(self, command: str, uid: str) -> str:
            if command != self.expected_command:
                raise RuntimeError(f"submitit's task command changed: {command!r} != {self.expected_command!r}")
            return self.script

    return LaunchSlurmExecutor


def require_tools(cfg: JobConfig) -> None:
    for tool in ("sbatch", "srun", "squeue", "scontrol"):
        if shutil.which(tool) is None:
            raise LaunchError(f"profile '{cfg.run.profile}' uses SLURM but '{tool}' is not on PATH (run on a login node)")


def task_entry(cfg: JobConfig) -> Any:
    """The call submitit runs in each task: a rank (srun mode) or a node's torchrun agent."""
    from launcher.runtime import slurm_entry

    return slurm_entry.run_rank if cfg.cluster.launch_mode == "srun" else slurm_entry.run_node


def submit(cfg: JobConfig, run: RunDir) -> None:
    require_tools(cfg)
    executor = _executor_class()(folder=render.submitit_folder(cfg), python=shlex.quote(cfg.run.python))
    executor.script = render.render_sbatch(cfg)
    executor.expected_command = render.submitit_command(cfg)
    per_node = cfg.procs_per_node if cfg.cluster.launch_mode == "srun" else 1
    executor.update_parameters(nodes=cfg.resources.nodes, ntasks_per_node=per_node)
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr; we report it once
            job = executor.submit(task_entry(cfg), cfg.run.dir)
    except Exception as err:  # submitit wraps sbatch's refusal in several exception types
        text = " ".join(str(err).split())
        raise LaunchError(f"sbatch refused the job: {text[:500]}") from None
    atomic_write_text(run.path / "slurm.json", json.dumps({"job_id": str(job.job_id)}))
    run.add_event("queued", slurm_job_id=str(job.job_id))


def submit_array(cfgs: list[JobConfig], runs: list[RunDir], out_dir: Any) -> str:
    """Submit a sweep's runs as one job array; each run keeps its own directory and job id
    (ARRAYID_INDEX). Held until every task's pickled call is in place, then released."""
    import submitit

    require_tools(cfgs[0])
    script = out_dir / "array.sbatch"
    atomic_write_text(script, render.render_sbatch_array(cfgs, str(out_dir)))
    out = subprocess.run(["sbatch", "--parsable", "--hold", str(script)], capture_output=True, text=True)
    if out.returncode != 0:
        raise LaunchError(f"sbatch refused the job array: {' '.join((out.stderr or out.stdout).split())[:500]}")
    array_id = out.stdout.strip().split(";")[0]
    try:
        for i, (cfg, run) in enumerate(zip(cfgs, runs, strict=True)):
            jid = f"{array_id}_{i}"
            folder = run.path / "submitit"
            folder.mkdir(exist_ok=True)
            submitit.helpers.DelayedSubmission(task_entry(cfg), cfg.run.dir).dump(folder / f"{jid}_submitted.pkl")
            atomic_write_text(run.path / "slurm.json", json.dumps({"job_id": jid, "array_job_id": array_id}))
            run.add_event("queued", slurm_job_id=jid)
        subprocess.run(["scontrol", "release", array_id], check=True, capture_output=True, text=True)
    except BaseException:
        subprocess.run(["scancel", array_id], capture_output=True)
        raise
    return array_id


def job_id(run: RunDir) -> str | None:
    try:
        return json.loads((run.path / "slurm.json").read_text())["job_id"]
    except (FileNotFoundError, KeyError, json.JSONDecodeError):
        return None


def slurm_state(jid: str) -> str | None:
    """The job's state from squeue, else scontrol (finished jobs stay there for MinJobAge)."""
    out = subprocess.run(["squeue", "-h", "-j", jid, "-o", "%T"], capture_output=True, text=True)
    state = out.stdout.strip()
    if out.returncode == 0 and state:
        return state.split()[0]
    out = subprocess.run(["scontrol", "-o", "show", "job", jid], capture_output=True, text=True)
    for word in out.stdout.split():
        if word.startswith("JobState="):
            return word.split("=", 1)[1]
    return None


def probe(run: RunDir) -> tuple[bool, dict[str, Any]]:
    """(whether the job is still in the queue, its id and SLURM state): one squeue/scontrol look."""
    jid = job_id(run)
    state = slurm_state(jid) if jid else None
    return state in ACTIVE, {"slurm_job_id": jid, "slurm_state": state}


def is_alive(run: RunDir) -> bool:
    return probe(run)[0]


def explain_end(details: dict[str, Any]) -> tuple[str, str]:
    """(our state, why) for a job that is gone from the queue without recording its end."""
    state = details["slurm_state"]
    if state == "CANCELLED":
        return "cancelled", "cancelled outside launch (scancel)"
    if state == "TIMEOUT":
        return "failed", "the job reached its time limit"
    return "failed", f"the job ended without recording its end (SLURM state {state or 'unknown'})"


def preempt(run: RunDir, signal_name: str) -> str:
    """What the cluster does before preempting: signal every task of the job's steps."""
    jid = job_id(run)
    if jid is None or not is_alive(run):
        raise LaunchError(f"{run.path}: not running (SLURM job {jid or '?'} is not in the queue)")
    subprocess.run(["scancel", f"--signal={signal_name}", jid], check=True)
    return f"scancel --signal={signal_name} {jid}"


def cancel(run: RunDir) -> None:
    jid = job_id(run)
    if jid is None or not is_alive(run):
        raise LaunchError(f"{run.path}: not running (SLURM job {jid or '?'} is not in the queue)")
    run.add_event("cancel_requested", slurm_job_id=jid)  # so the ranks save but do not requeue
    subprocess.run(["scancel", jid], check=True)
    deadline = time.monotonic() + 60
    while is_alive(run) and time.monotonic() < deadline:
        time.sleep(0.5)
    run.add_event("cancelled", slurm_job_id=jid)


def console_path(run: RunDir) -> Any:
    jid = job_id(run)
    return run.path / "submitit" / f"{jid}_0_log.out"
