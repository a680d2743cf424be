"""The calls submitit runs in each SLURM task (pickled by reference: keep this import-light).

srun mode: every task is one rank. torchrun mode: every task is one node's torchrun agent.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def run_rank(run_dir: str) -> None:
    from launcher.runtime.job import main

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
    code = subprocess.call(list(argv))
    if code:
        raise SystemExit(code)
