"""The preemption signal flag. Torch-free, so it is installed before the heavy imports start."""

from __future__ import annotations

import faulthandler
import signal
import sys
import time
from typing import Any

# A rank still alive this long after SIGTERM may be stuck: its threads' stacks go to its log, to
# show where. Under entry/torchrun_compat.FAILED_PEER_GRACE_S (10 s): torchrun SIGKILLs a failed
# attempt's other ranks then (a test keeps the order). A preemption's save that takes longer
# leaves its stacks in the log too, harmlessly.
STACK_DUMP_AFTER_S = 8

# The first preemption signal and when it came; written only by the handler.
received: dict[str, Any] = {"signum": None, "at": None}


def set_flag(signum: int) -> None:
    """Record `signum` as the preemption signal, unless one came first (the handler, and a drill)."""
    if received["signum"] is None:
        received.update(signum=signum, at=time.time())


def _on_signal(signum: int, frame: Any) -> None:
    # A handler may run between any two bytecodes: only set the flag, never do work here.
    set_flag(signum)
    if signum == signal.SIGTERM and sys.__stderr__ is not None:
        faulthandler.dump_traceback_later(STACK_DUMP_AFTER_S, exit=False, file=sys.__stderr__)


def install(signals: list[int]) -> None:
    """Make the flag-setting handler the only one for `signals`."""
    for signum in signals:
        signal.signal(signum, _on_signal)


def is_set() -> bool:
    return received["signum"] is not None


def name() -> str | None:
    """The received signal's name without SIG (USR1, TERM, ...), or None."""
    return signal.Signals(received["signum"]).name.removeprefix("SIG") if is_set() else None


def preemption_signals(name: str) -> list[int]:
    """The profile's signal plus SIGTERM (preemption with GraceTime, scancel, torchrun's shutdown)."""
    return sorted({int(getattr(signal, f"SIG{name}")), int(signal.SIGTERM)})


class IgnoredInWorkers:
    """A DataLoader's `worker_init_fn` (wrapping the loader's own): the worker ignores the signals
    the rank stops on. torch's workers die on SIGTERM (their C handler re-raises it), and torchrun's
    shutdown or scancel signals the rank's whole process group, so a cancelled rank would lose its
    workers and fail at its next batch instead of saving at it. The rank shuts its workers down
    itself when it exits; SIGKILL still ends them."""

    def __init__(self, then: Any = None) -> None:
        self.then = then
        self.signums = sorted({int(signal.SIGTERM)} | {int(s) for s in signal.Signals
                                                       if signal.getsignal(s) is _on_signal})

    def __call__(self, worker_id: int) -> None:
        for signum in self.signums:
            signal.signal(signum, signal.SIG_IGN)
        if self.then is not None:
            self.then(worker_id)
