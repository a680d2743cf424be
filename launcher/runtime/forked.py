"""A rank started by fork from its node's fork server (launcher.runtime.preload), made what
`python -u -m launcher.runtime RUN_DIR` would be: the server's signal dispositions undone, its own
command line, fork as the default start method of its own children, a fresh numpy seed,
torchmetrics' rank, the thread count of its environment, and the interpreter's exit handlers run
at its end (a forked child leaves by os._exit)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from pathlib import Path

from launcher.runtime import cpython_compat


def rank(*argv: str) -> None:
    """torchrun's entry point for a forked rank; exits with the rank's exit code."""
    from launcher.runtime import preload

    for signum, disposition in preload.INHERITED.items():
        signal.signal(signum, disposition if disposition is not None else signal.SIG_DFL)
    sys.argv = [str(Path(__file__).with_name("__main__.py")), *argv]
    _as_a_fresh_interpreter()
    from launcher.runtime.rank import main

    try:
        code = main(list(argv))
    finally:
        cpython_compat.run_exit_handlers()
    if code:
        raise SystemExit(code)


def _as_a_fresh_interpreter() -> None:
    """What the server set up from its own environment, set up from the rank's."""
    # A child of the fork server starts its own children (DataLoader workers) by fork server too,
    # each a new interpreter importing torch (5 s of CPU a worker); a fresh interpreter forks them.
    multiprocessing.set_start_method(None, force=True)
    if "numpy" in sys.modules:  # every fork would draw the server's stream (random reseeds itself)
        sys.modules["numpy"].random.seed()
    prints = sys.modules.get("torchmetrics.utilities.prints")
    if prints is not None:  # set at its import from LOCAL_RANK, which the server does not have
        prints.rank_zero_only.rank = int(os.environ.get("LOCAL_RANK", 0))
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0 and "torch" in sys.modules:
        torch = sys.modules["torch"]
        if torch.get_num_threads() != int(threads):  # OpenMP read the server's environment
            torch.set_num_threads(int(threads))
