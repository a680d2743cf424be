"""`python -m launcher.entry.agent TORCHRUN_ARGS`: torchrun's agent for one node, quiet about a
failed rank, its ranks (opt-in) forked from a preloaded fork server.

torchrun ends a failed attempt with its ChildFailedError as an uncaught traceback (some forty
lines in the console, naming only exit codes). launch already records every rank's failure and
says in one line what happened and what it does next, so this entry point runs torchrun and turns
that exception into one line and torchrun's exit code (1). It also gives the other ranks of a
failed attempt 10 s, not torchrun's 30 s, between its SIGTERM and its SIGKILL (torchrun_compat.py).

With LAUNCH_PRELOAD_RANKS=1 (job.preload_ranks = true; off by default) the node's ranks are forked from one
fork server that imported torch and torchmetrics once (launcher/runtime/preload.py), started before
the agent imports torch so that the two imports run side by side: ~5 s of CPU less for each rank
start. Everything else is torchrun unchanged: its arguments, its rendezvous, its handling of
signals and of the workers.
"""

from __future__ import annotations

import os
import sys

from launcher.entry import torchrun_compat
from launcher.runtime import cpython_compat

RANK_MODULE = "launcher.runtime"  # render.RANK_MODULE, without importing the config stack here


def main(argv: list[str]) -> int:
    preload = os.environ.get("LAUNCH_PRELOAD_RANKS") == "1" and torchrun_compat.written_for()
    if preload:
        cpython_compat.start_the_fork_server("launcher.runtime.preload")
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    from launcher.runtime.forked import rank

    torchrun_compat.shorten_the_shutdown_after_a_failure()
    try:
        if not (preload and torchrun_compat.run_forked(argv, rank, RANK_MODULE)):
            torchrun(argv)
    except ChildFailedError as err:
        failed = ", ".join(f"local rank {f.local_rank} exit {f.exitcode}"
                           for _, f in sorted(err.failures.items()))
        print(f"torchrun: the node's ranks failed ({failed}); launch names the cause below", file=sys.stderr)
        return 1
    finally:
        cpython_compat.stop_the_fork_server()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
