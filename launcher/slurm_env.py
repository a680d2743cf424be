"""What SLURM tells a process about its job (torch-free: the batch script and the ranks both ask)."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass


def current_job_id() -> str | None:
    """This job's id as launch records it: ARRAYID_INDEX for a job-array task (as submitit
    names it, and as squeue, scancel and scontrol accept it), else SLURM_JOB_ID."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")


def restart_count() -> int:
    """SLURM_RESTART_COUNT: how many times SLURM has requeued this job (by launch or by itself)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0"))


def node_name() -> str:
    """This process's node as the cluster names it (SLURM's node name: several may share one
    machine, and it is what srun -w and sbatch --exclude take)."""
    return os.environ.get("SLURMD_NODENAME") or os.uname().nodename


def queue_rows(job_ids: Sequence[str]) -> dict[str, tuple[str, str]] | None:
    """What squeue shows of these jobs, in one call: each job still in the queue's state (PENDING,
    RUNNING, COMPLETING, ...) and node list, by job id (an array's tasks one a row, `-r`). None if
    squeue refused: an old squeue refuses a list holding a job it no longer knows. The one place
    squeue's output is read."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%N", "-j", ",".join(job_ids)], capture_output=True,
                         text=True)
    if out.returncode != 0:
        return None
    rows = [line.split("|") for line in out.stdout.split() if line.count("|") == 2]
    return {jid: (state, nodes) for jid, state, nodes in rows if state}


def queue_row(job_id: str) -> tuple[str | None, str]:
    """The job's state as squeue shows it and its node list; (None, "") once it has left the
    queue or squeue cannot say."""
    rows = queue_rows([job_id]) or {}
    state, nodes = rows.get(job_id) or next(iter(rows.values()), (None, ""))  # an array's id: its first task
    return state, nodes


def queue_state(job_id: str) -> str | None:
    return queue_row(job_id)[0]


def job_detail(job_id: str) -> dict[str, str]:
    """`scontrol -o show job`'s KEY=VALUE fields of this job (JobState, Restarts, NodeList, ...);
    empty if SLURM does not know it. The one place that output is read."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True)
    first = out.stdout.splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    return dict(word.split("=", 1) for word in first.split() if "=" in word)


def hostnames(nodes: str) -> list[str]:
    """A node list (`n[1-3],n7`) as names; empty for none."""
    if not nodes or nodes == "(null)":
        return []
    out = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else []


def partition_nodes(partition: str) -> list[str]:
    """Every node of a partition, by name; empty if sinfo refused."""
    out = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%N"], capture_output=True, text=True)
    return hostnames(",".join(out.stdout.split())) if out.returncode == 0 else []


def node_states(nodes: str) -> dict[str, str]:
    """sinfo's state of each node of a node list (`n[1-3],n7`): idle, allocated, down*, ... (a
    trailing * is a node that does not respond); empty if sinfo refused."""
    out = subprocess.run(["sinfo", "-h", "-N", "-n", nodes, "-o", "%N|%T"], capture_output=True, text=True)
    return dict(line.split("|", 1) for line in out.stdout.split() if "|" in line) if out.returncode == 0 else {}


def unhealthy_nodes(nodes: str) -> list[str]:
    """Of a node list, those SLURM has down, drained, failing or not responding."""
    return sorted(n for n, s in node_states(nodes).items() if s.endswith("*") or s.startswith(("down", "drain", "fail")))


@dataclass(frozen=True)
class Allocation:
    """The SLURM allocation this shell is in (salloc, or an interactive job): what `--here` may use."""

    job_id: str
    nodes: int
    gpus_per_node: int | None  # None: SLURM did not say (no GPUs requested)
    cpus_per_node: int | None


def current_allocation() -> Allocation | None:
    env = os.environ
    if not env.get("SLURM_JOB_ID"):
        return None

    def number(*names: str) -> int | None:
        for name in names:
            match = re.match(r"\d+", env.get(name, ""))
            if match:
                return int(match.group())
        return None

    # SLURM_JOB_CPUS_PER_NODE ("2(x3),1"): the job's CPUs on each node, not the node's (SLURM_CPUS_ON_NODE)
    cpus = [int(m) for m in re.findall(r"(?:^|,)(\d+)", env.get("SLURM_JOB_CPUS_PER_NODE", ""))]
    return Allocation(job_id=env["SLURM_JOB_ID"], nodes=number("SLURM_JOB_NUM_NODES", "SLURM_NNODES") or 1,
                      gpus_per_node=number("SLURM_GPUS_ON_NODE"),
                      cpus_per_node=min(cpus) if cpus else number("SLURM_CPUS_ON_NODE"))
