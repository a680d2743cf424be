"""The one door to torchrun's private internals (torch.distributed.elastic), as lightning_compat.py
is Lightning's: every touchpoint is here, written for the torch in WRITTEN_FOR, and left undone on
another (torchrun then behaves as shipped).

After a rank failed, torchrun stops the node's other ranks with SIGTERM and waits its
shutdown_timeout (30 s) before SIGKILL. A rank stuck in a collective with the failed one, or hung
itself, never gets to act on the SIGTERM (a Python handler runs between bytecodes), and no rank
can save once a peer is gone (a save is agreed and, sharded, written by every rank): 30 s of every
such restart spent waiting. FAILED_PEER_GRACE_S is for logs and error records to be written.
"""

from __future__ import annotations

import signal
from importlib.metadata import PackageNotFoundError, version
from typing import Any

WRITTEN_FOR = {"torch": "2.14"}  # major.minor (pinned in pyproject)
FAILED_PEER_GRACE_S = 10


def written_for(installed: str | None = None) -> bool:
    """Whether the installed torch (or `installed`, a version string) is the one this was written for."""
    if installed is None:
        try:
            installed = version("torch")
        except PackageNotFoundError:
            return False
    return ".".join(installed.split("+")[0].split(".")[:2]) == WRITTEN_FOR["torch"]


_UNSET: Any = object()


def shorten_the_shutdown_after_a_failure(installed: str | None = None) -> bool:
    """torchrun's process context closes itself, `close()` without arguments, once one of its
    workers failed (or all ended); the agent closes it with a signal and its shutdown_timeout when
    the agent itself is signalled (a preemption or a cancel: the ranks are saving). Only the former
    is shortened, to FAILED_PEER_GRACE_S. False (and torchrun's 30 s) on a torch this was not
    written for."""
    if not written_for(installed):
        return False
    from torch.distributed.elastic.multiprocessing.api import PContext

    close = PContext.close
    if getattr(close, "launch_failure_grace", False):
        return True

    def close_soon_after_a_failure(self: Any, death_sig: signal.Signals | None = None, timeout: Any = _UNSET) -> None:
        if death_sig is None and timeout is _UNSET:  # a worker failed (or all ended), no signal to the agent
            timeout = FAILED_PEER_GRACE_S
        return close(self, death_sig) if timeout is _UNSET else close(self, death_sig, timeout)  # unset: torch's own

    close_soon_after_a_failure.launch_failure_grace = True  # type: ignore[attr-defined]
    PContext.close = close_soon_after_a_failure  # type: ignore[method-assign]
    return True
