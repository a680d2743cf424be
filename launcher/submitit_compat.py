"""The one door to submitit: every use of it, private names included, goes through here, and the
version it was written for is checked before a submission (as runtime/lightning_compat.py does for
Lightning). Importing this module does not import submitit: `render` (pure text) uses the command.

What launch takes from submitit: the job folder's layout, the pickled call each task runs (and its
runner, `python -m submitit.core._submit FOLDER`), per-task output files. What it does not: its
executor (launch submits its own rendered script with `sbatch --hold` and releases the job once
the pickled call is in place: backends/slurm.py's one submission path), submitit's batch-script
generator (it cannot express the torchrun mode, the profile's signal or the event hooks around
srun), `job.result()` (can block forever), `sacct` (fails without accounting).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from launcher.errors import LaunchError

SUPPORTED = "1.5."  # the submitit versions this module was written for (pyproject pins 1.5.4)
TASK_RUNNER = "submitit.core._submit"  # what every task runs: it loads FOLDER/<jobid>_submitted.pkl


def check_version() -> None:
    """Refuse a submitit this module was not written for, in one line naming both versions."""
    import submitit

    if not submitit.__version__.startswith(SUPPORTED):
        raise LaunchError(f"submitit {submitit.__version__} is installed; launch was written for {SUPPORTED}x "
                          "(pip install -e . installs it)")


def task_command(python: str, folder: str) -> str:
    """The command submitit runs in every task: its executor's `_submitit_command_str`, character for
    character (tests/test_render.py compares the two), so that a rendered script runs submitit's task."""
    return " ".join([shlex.quote(python), f"-u -m {TASK_RUNNER}", shlex.quote(folder)])


def dump_task(call: Any, argument: Any, path: Path) -> None:
    """Pickle the call a task runs where submitit's runner looks for it (job arrays and --here,
    which submit without submitit's executor)."""
    import submitit

    check_version()
    submitit.helpers.DelayedSubmission(call, argument).dump(path)
