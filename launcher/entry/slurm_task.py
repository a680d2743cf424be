"""The calls submitit runs in each SLURM task (pickled by reference, by name: keep this import-light).

srun mode: every task is one rank. torchrun mode: every task is one node's torchrun agent.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


def run_rank(run_dir: str) -> None:
    from launcher.runtime.rank import main

    code = main([run_dir])
    if code:
        raise SystemExit(code)


def run_node(run_dir: str) -> None:
    from launcher import render
    from launcher.config import load_resolved
    from launcher.rundir import RunDir

    cfg = load_resolved(RunDir(Path(run_dir)).config)
    node = int(os.environ["SLURM_NODEID"])
    argv = render.torchrun_argv(cfg, node, os.environ["LAUNCH_RDZV_ENDPOINT"])
    # SLURM signals every process of the step. torchrun's agent dies on SIGUSR1 and orphans its
    # workers, so this task and the agent ignore it (inherited across exec); the workers, which
    # are the ranks, install their own handler. SIGTERM is left to the agent: it forwards it.
    signum = getattr(signal, f"SIG{cfg.cluster.signal}")
    if signum != signal.SIGTERM:
        signal.signal(signum, signal.SIG_IGN)
    code = subprocess.call(list(argv))
    if code:
        raise SystemExit(code)
