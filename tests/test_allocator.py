"""job.tuned_allocator (launcher/render.py TUNED_ALLOCATOR): every rank's glibc malloc keeps the
memory a step frees for the next step, instead of mapping its large blocks afresh and trimming the
heap each time, which page-faults the step's memory back in on every step (and by an amount that
depends on the process's history: a rank forked from the fork server inherited the server's)."""

from __future__ import annotations

import os
import subprocess
import sys

from launcher import render
from tests.helpers.allocs import ROUNDS, STEP_PAGES
from tests.helpers.launch import REPO, rendered_rank_env


def faults(env: dict[str, str]) -> int:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-m", "tests.helpers.allocs"], cwd=REPO, env={**clean, **env},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def test_the_tuned_allocator_reuses_a_steps_freed_memory_where_glibc_faults_it_back_in_every_step() -> None:
    assert faults({}) >= ROUNDS * STEP_PAGES * 0.9  # glibc's defaults: the whole step, every step
    assert faults(render.TUNED_ALLOCATOR) < STEP_PAGES  # tuned: not one step's worth over all of them


def test_every_rank_gets_the_tuned_allocator_unless_the_job_or_the_profile_says_otherwise(write) -> None:
    job = write("job.toml", """
        [job]
        name = "alloc"
        [model]
        class_path = "mlp"
        [data]
        class_path = "digits"
    """)

    for mode in ("torchrun", "srun"):
        tuned = rendered_rank_env(job, mode)
        assert {k: tuned[k] for k in render.TUNED_ALLOCATOR} == render.TUNED_ALLOCATOR, tuned
        off = rendered_rank_env(job, mode, "job.tuned_allocator=false")
        assert not any(k.startswith("MALLOC_") for k in off), off
        own = rendered_rank_env(job, mode, 'cluster.env={ MALLOC_TRIM_THRESHOLD_ = "0" }')
        assert own["MALLOC_TRIM_THRESHOLD_"] == "0" and own["MALLOC_MMAP_THRESHOLD_"] == str(32 << 20), own
