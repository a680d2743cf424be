"""`python -m launcher.entry.agent TORCHRUN_ARGS`: torchrun's agent for one node, quiet about a
failed rank.

torchrun ends a failed attempt with its ChildFailedError as an uncaught traceback (some forty
lines in the console, naming only exit codes). launch already records every rank's failure and
says in one line what happened and what it does next, so this entry point runs torchrun's own
`main` and turns that exception into one line and torchrun's exit code (1). It also gives the
other ranks of a failed attempt FAILED_PEER_GRACE_S, not torchrun's 30 s, between its SIGTERM
and its SIGKILL (below). Everything else is torchrun unchanged: its arguments, its rendezvous,
its handling of signals and of the workers.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

# After a rank failed, torchrun stops the node's other ranks with SIGTERM and waits its
# shutdown_timeout (30 s) before SIGKILL. A rank stuck in a collective with the failed one, or hung
# itself, never gets to act on the SIGTERM (a Python handler runs between bytecodes), and no rank
# can save once a peer is gone (a save is agreed and, sharded, written by every rank): 30 s of a
# restart spent waiting. The grace is for logs and error records to be written.
FAILED_PEER_GRACE_S = 10


def shorten_the_shutdown_after_a_failure() -> bool:
    """torchrun's agent calls `_shutdown(sig, timeout)` on a signal to itself (a preemption or a
    cancel: the ranks are saving, torchrun's timeout stands) and `_shutdown(timeout=...)` when its
    workers ended or one failed: only the latter is shortened. False where torch's agent lacks the
    method this relies on (torchrun's 30 s then stand)."""
    try:
        from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
    except ImportError:
        return False
    shutdown = getattr(LocalElasticAgent, "_shutdown", None)
    if shutdown is None or getattr(shutdown, "_launch_failure_grace", False):
        return shutdown is not None

    def _shutdown(self: Any, death_sig: signal.Signals | None = None, timeout: int = 30, *args: Any, **kwargs: Any) -> Any:
        if death_sig is None:  # not a signal to the agent: its workers ended, or one of them failed
            death_sig, timeout = signal.SIGTERM, min(timeout, FAILED_PEER_GRACE_S)
        return shutdown(self, death_sig, timeout, *args, **kwargs)

    _shutdown._launch_failure_grace = True  # type: ignore[attr-defined]
    LocalElasticAgent._shutdown = _shutdown  # type: ignore[method-assign]
    return True


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
