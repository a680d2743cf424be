"""`python -m launcher.entry.agent TORCHRUN_ARGS`: torchrun's agent for one node, quiet about a
failed rank, its ranks forked from a preloaded fork server where that saves start-up.

torchrun ends a failed attempt with its ChildFailedError as an uncaught traceback (some forty
lines in the console, naming only exit codes). launch already records every rank's failure and
says in one line what happened and what it does next, so this entry point runs torchrun and turns
that exception into one line and torchrun's exit code (1). It also gives the other ranks of a
failed attempt 10 s, not torchrun's 30 s, between its SIGTERM and its SIGKILL (torchrun_compat.py).

LAUNCH_PRELOAD_RANKS (job.preload_ranks): "1" forks the node's ranks from one fork server that
imported torch and torchmetrics once (launcher/runtime/preload.py), started before the agent
imports torch so that the two imports run side by side: ~5 s of CPU less for each rank start;
"auto" (the default) does so where the node's ranks are at least its CPU cores, so that the agent
and its ranks would import on more processes than there are cores (a laptop, a CPU node, CI), and
not where cores outnumber ranks (a GPU node: the imports run side by side anyway); "0" never.
Everything else is torchrun unchanged: its arguments, its rendezvous, its handling of signals and
of the workers.
"""

from __future__ import annotations

import os
import sys

from launcher.entry import torchrun_compat
from launcher.runtime import cpython_compat

RANK_MODULE = "launcher.runtime"  # render.RANK_MODULE, without importing the config stack here


def preload_wanted(setting: str, argv: list[str], cores: int) -> bool:
    """Whether to fork the ranks from a preloaded server: LAUNCH_PRELOAD_RANKS `setting` ("1",
    "0" or "auto"), torchrun's `argv` (its --nproc-per-node) and the CPU cores this agent may use."""
    if setting != "auto":
        return setting == "1"
    ranks = ranks_per_node(argv)
    return ranks is not None and ranks >= cores


def ranks_per_node(argv: list[str]) -> int | None:
    """torchrun's --nproc-per-node (or --nproc_per_node) as a number; None if absent or a word."""
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name in ("--nproc-per-node", "--nproc_per_node"):
            value = value or (argv[i + 1] if i + 1 < len(argv) else "")
            return int(value) if value.isdigit() else None
    return None


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity: a SLURM task's own CPUs)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def main(argv: list[str]) -> int:
    preload = (preload_wanted(os.environ.get("LAUNCH_PRELOAD_RANKS", "0"), argv, usable_cores())
               and torchrun_compat.written_for())
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
    cpython_compat.exit_now(main(sys.argv[1:]))
