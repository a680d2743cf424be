"""The preemption signal flag. Torch-free, so it is installed before the heavy imports start."""

from __future__ import annotations

import faulthandler
import signal
import sys
import time
from typing import Any

# A rank still alive this long after SIGTERM is stuck: its threads' stacks go to its log, to
# show where (torchrun and SLURM kill it soon after).
STACK_DUMP_AFTER_S = 20

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
