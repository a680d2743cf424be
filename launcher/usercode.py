"""Where a run's user code is imported from: the run's snapshot of it, else the submit directory.
Used by every rank and by the one-device tools (tune, predict, export); imports no torch."""

from __future__ import annotations

import sys

from launcher.config import JobConfig
from launcher.rundir import RunDir


def import_user_code(cfg: JobConfig, run: RunDir) -> None:
    """Make the user's modules importable: the run's snapshot of them (taken at submit, or by
    `launch resume --code current`), ahead of everything; without one, the submit directory."""
    if run.code.is_dir():
        sys.path.insert(0, str(run.code))
    elif cfg.run.workdir and cfg.run.workdir not in sys.path:
        sys.path.insert(0, cfg.run.workdir)
