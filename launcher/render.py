"""Pure text-making: resolved config -> the commands, environment and scripts a run executes.

Nothing here touches a process or a cluster, and nothing imports torch, so every output is
checked by golden files under `tests/golden/`. Every interpolated value goes through
`shlex.quote`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from launcher.config import JobConfig


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
        "LAUNCH_MODE": launch_mode,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    }
    env.update(cfg.cluster.env)
    return env


def torchrun_argv(cfg: JobConfig, node: int, endpoint: str) -> tuple[str, ...]:
    """The torchrun agent command for one node: c10d rendezvous, no restarts (we own those)."""
    argv = [
        cfg.run.python or "python",
        "-m",
        "torch.distributed.run",
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
    argv += ["--max-restarts", "0", "-m", "launcher.runtime", cfg.run.dir]
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


def render_local(cfg: JobConfig) -> str:
    """What `launch submit` runs on the local backend, as a script a person can read and rerun."""
    cmds = local_commands(cfg)
    lines = [
        "#!/usr/bin/env bash",
        f"# launch: job {shlex.quote(cfg.job.name)}, run {shlex.quote(cfg.run.id)}, local backend",
        f"# {cfg.resources.nodes} node(s) x {cfg.procs_per_node} process(es), "
        + (f"{cfg.resources.gpus_per_node} GPU(s) per node (nccl)" if cfg.uses_gpus else "CPU (gloo)"),
        f"cd {shlex.quote(cfg.run.workdir or '.')}",
    ]
    if len(cmds) == 1:
        lines.append(shell_line(cmds[0]))
    else:
        lines += [shell_line(c) + " &" for c in cmds] + ["wait"]
    return "\n".join(lines) + "\n"
