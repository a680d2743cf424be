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

import logging
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


def run_forked(argv: list[str], entry: Any, module: str, installed: str | None = None) -> bool:
    """torchrun's `main(argv)`, with its workers started from the fork server: `entry(*args)` in a
    forked child instead of `python -u -m module *args` in a new interpreter. torchrun's own path
    (`run`): its arguments parsed, its launch config made from them; only the entry point and the
    start method differ. False, and nothing run, on a torch this was not written for or a command
    that is not `-m module`."""
    if not written_for(installed):
        return False
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, parse_args

    args = parse_args(argv)
    if not args.module or args.training_script != module or args.no_python:
        return False
    if args.master_port is None:  # as torchrun's run() does (only the static rendezvous reads it)
        args.master_port = 29500
    config, _, cmd_args = config_from_args(args)
    if cmd_args[:3] != ["-u", "-m", module]:
        return False
    config.start_method = "forkserver"
    _stop_forked_peers_soon_after_a_failure()
    _let_forked_workers_end_when_closing()
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").addFilter(_failure_in_one_line)
    elastic_launch(config=config, entrypoint=entry)(*cmd_args[3:])
    return True


def _stop_forked_peers_soon_after_a_failure() -> None:
    """Forked workers are torch.multiprocessing's: when one fails, its process context's join
    (which torchrun's poll calls before its own close) SIGTERMs the others and SIGKILLs them
    after 30 s. Made FAILED_PEER_GRACE_S, as for workers started as commands."""
    from torch.multiprocessing.spawn import ProcessContext

    join = ProcessContext.join
    if getattr(join, "launch_failure_grace", False):
        return

    def join_and_stop_soon(self: Any, timeout: float | None = None, grace_period: float | None = None) -> bool:
        if grace_period is not None:
            return join(self, timeout, grace_period)
        wait = self._join_procs_with_timeout  # torch's: after its SIGTERM, join for 30 s, then SIGKILL
        self._join_procs_with_timeout = lambda seconds: wait(min(seconds, FAILED_PEER_GRACE_S))
        try:
            return join(self, timeout)
        finally:
            del self._join_procs_with_timeout

    join_and_stop_soon.launch_failure_grace = True  # type: ignore[attr-defined]
    ProcessContext.join = join_and_stop_soon  # type: ignore[method-assign]


def _let_forked_workers_end_when_closing() -> None:
    """A forked worker that returned waits, before it exits, until the agent has read every
    worker's return value (the agent's poll then releases them all). When the agent closes the
    workers instead (it was signalled: a cancel, SLURM's SIGTERM; or one failed), it no longer
    polls: a rank that saved on the signal and returned would wait out the whole close (30 s) and
    be SIGKILLed. Closing releases them first."""
    from torch.distributed.elastic.multiprocessing.api import MultiprocessContext

    close = MultiprocessContext._close
    if getattr(close, "launch_release", False):
        return

    def release_then_close(self: Any, death_sig: signal.Signals, timeout: int = 30) -> None:
        self._worker_finished_event.set()
        return close(self, death_sig, timeout)

    release_then_close.launch_release = True  # type: ignore[attr-defined]
    MultiprocessContext._close = release_then_close  # type: ignore[method-assign]


def _failure_in_one_line(record: logging.LogRecord) -> bool:
    """torchrun logs a forked worker's failure with the traceback of its own join (seven lines of
    torch internals that name only an exit code): the line is kept, the traceback dropped."""
    if record.exc_info and str(record.msg).startswith("failed (exitcode"):
        record.exc_info = None
        record.exc_text = None
    return True
