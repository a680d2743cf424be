"""`python -m launcher.entry.agent TORCHRUN_ARGS`: torchrun's agent for one node, quiet about a
failed rank.

torchrun ends a failed attempt with its ChildFailedError as an uncaught traceback (some forty
lines in the console, naming only exit codes). launch already records every rank's failure and
says in one line what happened and what it does next, so this entry point runs torchrun's own
`main` and turns that exception into one line and torchrun's exit code (1). It also gives the
other ranks of a failed attempt 10 s, not torchrun's 30 s, between its SIGTERM and its SIGKILL
(torchrun_compat.py). Everything else is torchrun unchanged: its arguments, its rendezvous,
its handling of signals and of the workers.
"""

from __future__ import annotations

import sys

from launcher.entry.torchrun_compat import shorten_the_shutdown_after_a_failure


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    shorten_the_shutdown_after_a_failure()
    try:
        torchrun(argv)
    except ChildFailedError as err:
        failed = ", ".join(f"local rank {f.local_rank} exit {f.exitcode}"
                           for _, f in sorted(err.failures.items()))
        print(f"torchrun: the node's ranks failed ({failed}); launch names the cause below", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
