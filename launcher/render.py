"""Pure text-making: resolved config -> the commands, environment and scripts a run executes.

Nothing here touches a process or a cluster, and nothing imports torch, so every output is
checked by golden files under `tests/golden/`. Every interpolated value goes through
`shlex.quote`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from launcher import submitit_compat
from launcher.config.schema import JobConfig
from launcher.rundir import RunDir

# The modules launch starts by name (never imported here): a rank, and the batch script's hooks.
RANK_MODULE = "launcher.runtime"
AGENT_MODULE = "launcher.entry.agent"  # torchrun (torch.distributed.run), quiet about a failed rank
BATCH_HOOKS_MODULE = "launcher.entry.slurm_hooks"
WATCH_MODULE = "launcher.entry.watch"
RESTART_IN_ALLOCATION = 3  # the end hook's exit status for "start the next attempt as a new srun step"
# glibc's malloc with fixed thresholds (job.tuned_allocator): a block under 32 MiB comes from the
# heap, and freed memory is given back to the system only past 1 GiB. By default glibc maps large
# blocks afresh and trims the heap as soon as a step frees them, so every step page-faults its
# activations back in (bench/throughput.py's CNN on CPU: 1,000-8,000 faults a step, up to a quarter
# of it), by an amount that depends on the process's history: a rank forked from the fork server
# inherits the server's (forked ranks of a plain DDP loop stepped ~10 % slower than fresh ones).
TUNED_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


@dataclass(frozen=True)
class NodeCommand:
    """One torchrun agent: on the local backend, one per (simulated) node."""

    node: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]


def rank_env(cfg: JobConfig, launch_mode: str) -> dict[str, str]:
    """Environment every rank gets, on top of the submitting environment."""
    threads = cfg.resources.cpus_per_task or 1
    env = {
        "LAUNCH_RUN_DIR": cfg.run.dir,
        "LAUNCH_BACKEND": cfg.cluster.backend,
        "LAUNCH_MODE": launch_mode,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }
    if launch_mode == "torchrun":  # the agent forks the ranks from a preloaded server (entry/agent.py)
        preload = cfg.job.preload_ranks
        env["LAUNCH_PRELOAD_RANKS"] = "auto" if preload == "auto" else "1" if preload else "0"
    if cfg.job.tuned_allocator:
        env.update(TUNED_ALLOCATOR)
    env.update(cfg.cluster.env)  # the profile's own values win (cluster.env)
    return env


def torchrun_argv(cfg: JobConfig, node: int, endpoint: str) -> tuple[str, ...]:
    """The torchrun agent command for one node: c10d rendezvous, no restarts (we own those).
    `launcher.entry.agent` is torchrun's own main, with a failed rank's traceback made one line."""
    argv = [
        cfg.run.python or "python",
        "-m",
        AGENT_MODULE,
        "--nnodes",
        str(cfg.resources.nodes),
        "--nproc-per-node",
        str(cfg.procs_per_node),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        endpoint,
        "--rdzv-id",
        cfg.run.id,
    ]
    if cfg.resources.nodes > 1:
        # Every simulated node is on this machine: say which agent hosts the rendezvous store.
        argv += ["--rdzv-conf", f"is_host={1 if node == 0 else 0}"]
    argv += ["--max-restarts", "0", "-m", RANK_MODULE, cfg.run.dir]
    return tuple(argv)


def local_commands(cfg: JobConfig) -> list[NodeCommand]:
    """The local backend's plan: one torchrun agent per node, rendezvous on loopback."""
    endpoint = f"127.0.0.1:{cfg.run.rdzv_port}"
    env = tuple(sorted(rank_env(cfg, "torchrun").items()))
    return [NodeCommand(n, torchrun_argv(cfg, n, endpoint), env) for n in range(cfg.resources.nodes)]


def shell_line(cmd: NodeCommand) -> str:
    """One command as a shell line: `env K=V ... argv`, every word quoted."""
    words = ["env"] + [f"{k}={v}" for k, v in cmd.env] + list(cmd.argv)
    return " ".join(shlex.quote(w) for w in words)


def code_comment(cfg: JobConfig) -> str:
    """Where the ranks import the user's code from (no user text: a path could hold a newline)."""
    script = ("\n# every rank runs the job's script with its arguments (job.script, job.args in "
              "$LAUNCH_RUN_DIR/config.toml), its Trainer launch's") if cfg.job.script else ""
    if cfg.job.snapshot_code:
        return ("# user code: imported from $LAUNCH_RUN_DIR/code, the snapshot taken at submit "
                "(launch resume --code current replaces it)" + script)
    return "# user code: imported live from the submit directory (job.snapshot_code = false)" + script


def render_local(cfg: JobConfig) -> str:
    """What `launch submit` runs on the local backend, as a script a person can read and rerun."""
    cmds = local_commands(cfg)
    lines = [
        "#!/usr/bin/env bash",
        f"# launch: job {shlex.quote(cfg.job.name)}, run {shlex.quote(cfg.run.id)}, local backend",
        f"# {cfg.resources.nodes} node(s) x {cfg.procs_per_node} process(es), "
        + (f"{cfg.resources.gpus_per_node} GPU(s) per node (nccl)" if cfg.uses_gpus else "CPU (gloo)"),
        code_comment(cfg),
        f"cd {shlex.quote(cfg.run.workdir or '.')}",
    ]
    if len(cmds) == 1:
        lines.append(shell_line(cmds[0]))
    else:
        lines += [shell_line(c) + " &" for c in cmds] + ["wait"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- SLURM


def submitit_folder(cfg: JobConfig) -> str:
    return f"{cfg.run.dir}/{RunDir.SUBMITIT}"


def submitit_command(cfg: JobConfig) -> str:
    """The command submitit runs in every task (its `_submitit_command_str`, character for character)."""
    return submitit_compat.task_command(cfg.run.python or "python", submitit_folder(cfg))


def rdzv_port_expr(cfg: JobConfig) -> str:
    """Shell arithmetic: a port per job and per requeue (a requeued job keeps its id, and the last
    attempt's store may still hold its port), so neither sharing a node nor a restart collides."""
    return f"$(( {cfg.cluster.rdzv_port} + (SLURM_JOB_ID + 97 * ${{SLURM_RESTART_COUNT:-0}}) % 1000 ))"


def task_log_pattern(cfg: JobConfig, task: str, array: bool = False) -> str:
    """Per-task output file; array tasks are named ARRAYID_INDEX like submitit names them."""
    return f"{submitit_folder(cfg)}/{'%A_%a' if array else '%j'}_{task}_log.out"


def task_cpus(cfg: JobConfig) -> int | None:
    """CPUs of one SLURM task: a rank's (srun mode), or a node's ranks' together (torchrun mode,
    one task per node runs them all)."""
    cpus = cfg.resources.cpus_per_task
    if cpus is not None and cfg.cluster.launch_mode == "torchrun":
        cpus *= cfg.procs_per_node
    return cpus


def container_mounts(cfg: JobConfig, user: list[str]) -> str:
    """The mounts a containerised task needs: the submit directory (the job's code and data paths,
    and the working directory), the run directory when it is elsewhere, then the profile's."""
    own = [cfg.run.workdir]
    if not (cfg.run.dir + "/").startswith(cfg.run.workdir.rstrip("/") + "/"):
        own.append(cfg.run.dir)
    return ",".join([f"{d}:{d}" for d in own if d] + user)


def container_words(cfg: JobConfig) -> tuple[list[str], list[str]]:
    """(srun options, the words before the task's python): pyxis takes srun options, Apptainer
    wraps the command. The batch script itself, and launch's hooks in it, stay on the host."""
    prof = cfg.cluster
    if prof.container == "pyxis":
        assert prof.container_image is not None
        return [f"--container-image={prof.container_image}",
                f"--container-mounts={container_mounts(cfg, prof.container_mounts)}",
                f"--container-workdir={prof.container_workdir or cfg.run.workdir}"], []
    if prof.container == "apptainer":
        assert prof.apptainer_image is not None
        return [], ["apptainer", "exec", *(["--nv"] if cfg.uses_gpus else []),
                    "--bind", container_mounts(cfg, prof.apptainer_binds), prof.apptainer_image]
    return [], []


def sbatch_directives(cfg: JobConfig, array: bool = False) -> list[tuple[str, str | None]]:
    res, prof = cfg.resources, cfg.cluster
    per_node_tasks = cfg.procs_per_node if prof.launch_mode == "srun" else 1
    cpus = task_cpus(cfg)
    items: list[tuple[str, str | None]] = [
        ("job-name", cfg.job.name),
        ("partition", prof.partition),
        ("account", prof.account),
        ("qos", prof.qos),
        ("constraint", prof.constraint),
        ("nodes", str(res.nodes)),
        ("ntasks-per-node", str(per_node_tasks)),
        ("gpus-per-node", str(res.gpus_per_node) if res.gpus_per_node else None),
        ("cpus-per-task", str(cpus) if cpus else None),
        ("mem", res.mem or prof.mem),
        ("time", res.time or prof.max_time),
        ("dependency", cfg.run.dependency or None),
        ("signal", f"{prof.signal}@{prof.signal_grace_s}"),
        ("requeue", ""),
        ("open-mode", "append"),
        ("output", task_log_pattern(cfg, "0", array)),
    ]
    return [(k, v) for k, v in items if v is not None]


def render_sbatch(cfg: JobConfig, array: bool = False) -> str:
    """The batch script `launch submit` hands to sbatch, top to bottom.

    srun mode: one task per GPU (or CPU process), Lightning's SLURM environment.
    torchrun mode: one task per node running `torchrun --nnodes N --nproc-per-node G`, with a
    c10d rendezvous on the allocation's first node, resolved here, inside the job.
    """
    prof = cfg.cluster
    py = shlex.quote(cfg.run.launcher_python or cfg.run.python or "python")  # the hooks: on the host
    run_dir = shlex.quote(cfg.run.dir)
    lines = [
        "#!/bin/bash",
        f"# launch: job {shlex.quote(cfg.job.name)}, run {shlex.quote(cfg.run.id)}, "
        f"profile {shlex.quote(cfg.run.profile)}, {prof.launch_mode} mode",
        f"# {cfg.resources.nodes} node(s) x {cfg.procs_per_node} rank(s), "
        + (f"{cfg.resources.gpus_per_node} GPU(s) per node (nccl)" if cfg.uses_gpus else "CPU (gloo)"),
        code_comment(cfg),
    ]
    if array:
        lines.append("# one task of a job array (launch sweep): the array's own script runs this file with bash")
    for key, value in sbatch_directives(cfg, array):
        lines.append(f"#SBATCH --{key}" + (f"={shlex.quote(value)}" if value else ""))
    lines += [f"#SBATCH {extra}" for extra in prof.sbatch_extra]
    if prof.setup:
        lines += ["", "# setup (from the profile)"] + list(prof.setup)
    lines += ["", f"cd {shlex.quote(cfg.run.workdir or '.')}"]
    env = rank_env(cfg, prof.launch_mode)
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines.append("export SUBMITIT_EXECUTOR=slurm")
    # --kill-on-bad-exit: a rank (or node agent) that exits non-zero ends the step at once; the
    # others would otherwise wait in a collective until job.collective_timeout_s.
    srun = ["srun", "--unbuffered", "--kill-on-bad-exit=1", "--output", task_log_pattern(cfg, "%t", array)]
    # The step's shape, said outright: the batch allocation implies it, but `launch submit --here`
    # runs this script inside an allocation that may be larger or shaped otherwise.
    srun += [f"--nodes={cfg.resources.nodes}"]
    if prof.launch_mode == "srun":
        srun += [f"--ntasks-per-node={cfg.procs_per_node}"]
    # Restated for the step: srun of Slurm 22.05 to 23.02 does not inherit the batch's
    # --cpus-per-task, and with CPU binding every task would get one core.
    if task_cpus(cfg):
        srun += [f"--cpus-per-task={task_cpus(cfg)}"]
    # One GPU a task (srun mode) only: binding torchrun's one task per node could hide the GPUs
    # away from the cores it was given.
    if prof.gpu_bind and cfg.uses_gpus and prof.launch_mode == "srun":
        srun += [f"--gpu-bind={prof.gpu_bind}"]
    if prof.launch_mode == "torchrun":
        lines += [
            "# the rendezvous host: the first node of this allocation",
            'LAUNCH_RDZV_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
            f'export LAUNCH_RDZV_ENDPOINT="$LAUNCH_RDZV_HOST:{rdzv_port_expr(cfg)}"',
            "# each node's task runs: " + " ".join(
                shlex.quote(w) for w in torchrun_argv(cfg, 0, "$LAUNCH_RDZV_ENDPOINT")
            ).replace("is_host=1", "is_host=<1 on the first node, else 0>"),
        ]
        srun += ["--ntasks-per-node", "1"]
    container_opts, wrapper = container_words(cfg)
    srun += container_opts + wrapper
    if prof.container:
        lines.append(f"# the ranks run in a container ({prof.container}); the hooks around srun run on the host")
    lines += [
        "",
        f"{py} -m {BATCH_HOOKS_MODULE} started {run_dir}",
        "while :; do",
        "    " + " ".join(shlex.quote(w) for w in srun) + " " + submitit_command(cfg) + " &",
        "    srun_pid=$!",
        f"    # stops the step if a rank makes no progress for job.stall_timeout_s ({cfg.job.stall_timeout_s} s)",
        f'    {py} -m {WATCH_MODULE} {run_dir} "$srun_pid"',
        '    wait "$srun_pid"',
        "    rc=$?",
        "    # records the attempt's end (and requeues a preempted job); exits "
        f"{RESTART_IN_ALLOCATION} to restart the run",
        "    # as a new step of this allocation (job.restart_on, every node still answering)",
        f'    {py} -m {BATCH_HOOKS_MODULE} ended {run_dir} "$rc"',
        f'    [ $? -eq {RESTART_IN_ALLOCATION} ] || break',
        f"    {py} -m {BATCH_HOOKS_MODULE} started {run_dir}",
        "done",
        'exit "$rc"',
    ]
    return "\n".join(lines) + "\n"


def array_directives_key(cfg: JobConfig) -> list[tuple[str, str | None]]:
    """What must be equal for runs to share one job array: every directive but the output file."""
    return [(k, v) for k, v in sbatch_directives(cfg, array=True) if k != "output"] + [
        ("extra", " ".join(cfg.cluster.sbatch_extra))]


def render_sbatch_array(cfgs: list[JobConfig], out_dir: str) -> str:
    """One job array for a sweep: task i runs run i's own batch script (rendered with array=True).

    Every run keeps its own directory, submitit folder, events and log; only the allocation
    request is shared, so the points must ask for the same resources.
    """
    first = cfgs[0]
    lines = [
        "#!/bin/bash",
        f"# launch: sweep of job {shlex.quote(first.job.name)}: {len(cfgs)} runs as one job array, "
        f"profile {shlex.quote(first.run.profile)}, {first.cluster.launch_mode} mode",
    ]
    for key, value in sbatch_directives(first, array=True):
        if key == "output":
            value = f"{out_dir}/%A_%a.out"
        lines.append(f"#SBATCH --{key}" + (f"={shlex.quote(value)}" if value else ""))
    lines += [f"#SBATCH {extra}" for extra in first.cluster.sbatch_extra]
    lines += [f"#SBATCH --array=0-{len(cfgs) - 1}", "", 'case "$SLURM_ARRAY_TASK_ID" in']
    for i, cfg in enumerate(cfgs):
        script = shlex.quote(f"{cfg.run.dir}/{RunDir.BATCH_SCRIPT}")
        log = shlex.quote(f"{submitit_folder(cfg)}/") + f'"${{SLURM_ARRAY_JOB_ID}}_{i}_0_log.out"'
        lines.append(f"  {i}) exec bash {script} >> {log} 2>&1 ;;")
    lines += ["esac", 'echo "launch: no run for array task $SLURM_ARRAY_TASK_ID" >&2', "exit 2"]
    return "\n".join(lines) + "\n"
