"""launch: Lightning from a laptop to a SLURM cluster, kept alive through preemption.

The Python API (launcher/api.py) is imported on first use, so `import launcher` and the ranks'
imports of launcher's modules stay free of it:

    import launcher
    run = launcher.submit("jobs/mnist.toml", procs=2)
    run.wait(); run.metrics()
"""

from __future__ import annotations

from typing import Any

__all__ = ["LaunchError", "Run", "RunStatus", "runs", "submit"]


def __getattr__(name: str) -> Any:
    if name == "LaunchError":
        from launcher.errors import LaunchError

        return LaunchError
    if name == "RunStatus":
        from launcher.lifecycle import RunStatus

        return RunStatus
    if name in ("Run", "runs", "submit"):
        from launcher import api

        return getattr(api, name)
    raise AttributeError(f"module 'launcher' has no attribute {name!r}")
