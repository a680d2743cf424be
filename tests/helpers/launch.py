"""Run the real `launch` CLI in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def run_launch(*args: str, cwd: Path = REPO, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real CLI in a subprocess, as a user would run it."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def rendered_rank_env(job: Path | str, mode: str, *sets: str) -> dict[str, str]:
    """The environment launch renders for every rank of `job` (with `--set` overrides) in `mode`."""
    from launcher import config, render

    return render.rank_env(config.resolve(config.Request(job_file=str(job), overrides=sets)), mode)
