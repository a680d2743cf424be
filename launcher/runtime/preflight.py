"""Pre-flight checks: at each attempt's start, before training, every rank checks that it can work.

- its device: a small matmul with a known result (on its GPU, or the CPU);
- the network: one all-gather across every rank, which also carries each rank's findings, and one
  all-reduce whose sum is known;
- the run directory (once a node, local rank zero): writable, and with room for two checkpoints
  (the newest one's size, else the model's parameters three times: weights and two optimizer moments);
- the site's own node check (`cluster.node_check`, an argv run once a node by local rank zero, such
  as a node-health-check script): a non-zero exit fails the node.

A failure stops every rank before training. The rank that failed raises PreflightFailed naming its
node and the check; the others raise it saying another rank failed (an echo: attempts.ECHO). On
SLURM the end hook records the node as bad and continues the run as a job without it; locally the
run fails (there is no other node).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from launcher.rundir import RunDir
from launcher.runtime import output
from launcher.runtime.lightning_api import Callback, LightningModule, Trainer
from launcher.slurm_env import node_name

NODE_CHECK_TIMEOUT_S = 120
ECHO_TEXT = "another rank failed its pre-flight check"  # in attempts.ECHO: not the cause


class PreflightFailed(RuntimeError):
    """A pre-flight check failed on this rank (or, saying so, on another)."""


def device_check(device: torch.device) -> str | None:
    a = torch.arange(1.0, 17.0, device=device).reshape(4, 4)
    got = float((a @ (2 * torch.eye(4, device=device))).sum().item())
    return None if got == 272.0 else f"device {device}: a 4x4 matmul gave {got}, not 272"


def room_check(directory: Path, need_bytes: int) -> str | None:
    """The directory takes a write (fsynced) and has `need_bytes` free."""
    probe = directory / f".preflight-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"launch pre-flight\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        probe.unlink()
        free = shutil.disk_usage(directory).free
    except OSError as err:
        return f"run directory {directory} is not writable: {err.strerror or err}"
    if free < need_bytes:
        return (f"run directory {directory}: {free / 1e9:.2f} GB free, less than room for two checkpoints "
                f"({need_bytes / 1e9:.2f} GB)")
    return None


def node_check(argv: list[str]) -> str | None:
    """The site's node check: None if it exits 0, else what it said (its last line)."""
    shown = " ".join(argv)
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=NODE_CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return f"site node check (cluster.node_check) `{shown}`: command not found"
    except subprocess.TimeoutExpired:
        return f"site node check (cluster.node_check) `{shown}` did not finish in {NODE_CHECK_TIMEOUT_S} s"
    if out.returncode == 0:
        return None
    said = (out.stderr.strip() or out.stdout.strip()).splitlines()
    return (f"site node check (cluster.node_check) `{shown}` exited {out.returncode}"
            + (f": {said[-1][:300]}" if said else ""))


def checkpoint_bytes(run: RunDir, module: Any) -> int:
    """What one checkpoint of this run takes: the newest one's size, else 3x the parameters."""
    sizes = [p.stat().st_size for p in run.checkpoints.glob("*.ckpt") if p.is_file()]
    if sizes:
        return max(sizes)
    return 3 * sum(p.numel() * p.element_size() for p in module.parameters())


def run_checks(trainer: Any, module: Any, run: RunDir, node_check_argv: list[str]) -> float:
    """Every check on this rank, then the collective ones; raises PreflightFailed. Returns the
    seconds they took."""
    start = time.monotonic()
    device = trainer.strategy.root_device
    found: list[str] = []
    try:
        problem = device_check(device)
    except Exception as err:  # noqa: BLE001 - a broken device raises: that is the finding
        problem = f"device {device}: {type(err).__name__}: {str(err)[:300]}"
    if problem:
        found.append(problem)
    if output.rank_from_env()[1] == 0:  # once a node: local rank zero (torchrun's LOCAL_RANK, srun's SLURM_LOCALID)
        problem = room_check(run.checkpoints, 2 * checkpoint_bytes(run, module))
        if problem:
            found.append(problem)
        if node_check_argv:
            problem = node_check(node_check_argv)
            if problem:
                found.append(problem)
    host, rank, world = node_name(), trainer.global_rank, trainer.world_size
    if world > 1 and dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (rank, host, found))
        ones = torch.ones(1, dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
        dist.all_reduce(ones)
        if float(ones.item()) != world:
            found.append(f"network: an all-reduce of ones over {world} ranks gave {float(ones.item())}")
    else:
        gathered = [(rank, host, found)]
    if found:
        raise PreflightFailed(f"pre-flight check failed on {host}: {'; '.join(found)}")
    failed = [(r, h, f) for r, h, f in gathered if f]
    if failed:
        r, h, f = failed[0]
        raise PreflightFailed(f"{ECHO_TEXT}: rank {r} on {h}: {f[0][:200]}")
    return time.monotonic() - start


class Preflight(Callback):
    """Runs the checks when fit sets up (the process group is up, nothing trained yet)."""

    def __init__(self, run: RunDir, node_check_argv: list[str]) -> None:
        self.run, self.node_check_argv = run, node_check_argv

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        took = run_checks(trainer, pl_module, self.run, self.node_check_argv)
        if trainer.global_rank == 0:
            site = ", the site's node check" if self.node_check_argv else ""
            print(f"[launch] pre-flight checks passed on {trainer.world_size} rank(s) in {took:.2f} s (device, "
                  f"network, run directory{site})", flush=True)
