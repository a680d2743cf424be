"""What SLURM tells a process about its job (torch-free: the batch script and the ranks both ask)."""

from __future__ import annotations

import os


def current_job_id() -> str | None:
    """This job's id as launch records it: ARRAYID_INDEX for a job-array task (as submitit
    names it, and as squeue, scancel and scontrol accept it), else SLURM_JOB_ID."""
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ.get('SLURM_ARRAY_TASK_ID', '')}"
    return os.environ.get("SLURM_JOB_ID")
