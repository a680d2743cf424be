"""`python -m launcher.runtime RUN_DIR`: one rank of a run, from start to exit code.

Imports of torch and Lightning happen only after rank-aware output is installed (see output.py).
Every failure is recorded in `errors/rank-N.json` before the rank exits with 1.
"""

from __future__ import annotations

import gc
import os
import re
import sys
import traceback
from pathlib import Path

from launcher.attempts import ECHO
from launcher.config import load_resolved
from launcher.records import AliveMarker, RankError
from launcher.rundir import RunDir, atomic_write_text
from launcher.runtime import cpython_compat, output, signals
from launcher.slurm_env import node_name as host_name
from launcher.usercode import import_user_code


def main(argv: list[str] | None = None) -> int:
    # before any fork: a DataLoader worker forked while a gloo thread held CPython 3.11's
    # thread-state lock would never start (cpython_compat.py)
    cpython_compat.guard_forks()
    argv = sys.argv[1:] if argv is None else argv
    run_path = argv[0] if argv else os.environ.get("LAUNCH_RUN_DIR", "")
    if not run_path:
        print("usage: python -m launcher.runtime RUN_DIR", file=sys.stderr)
        return 2
    run = RunDir(Path(run_path))
    if not run.config.is_file():  # `--help`, a typo: write nothing (the rank log would make a directory)
        print(f"usage: python -m launcher.runtime RUN_DIR ({run_path}: no config.toml there)", file=sys.stderr)
        return 2
    rank, _ = output.rank_from_env()
    output.install(run.rank_log(rank), rank)
    # Removed on every way out of this function; left behind only by a rank that died without a
    # Python error (SIGKILL, out of memory, a native crash), which is how the backends name it.
    alive = run.alive_marker(rank)
    try:
        atomic_write_text(alive, AliveMarker(rank, host_name(), os.getpid()).dumps())
    except OSError:
        pass
    try:
        return _main(run, rank)
    finally:
        alive.unlink(missing_ok=True)
        # Everything the rank writes is closed by now. The interpreter's exit would spend 2-3 s
        # (py-spy: 90% in gc_collect_main) walking torch's and Lightning's object graph to free
        # what the OS frees anyway; every attempt's end waits for it. Frozen objects are skipped
        # by the collector; atexit handlers and finalizers of what is still referenced still run.
        gc.freeze()


def _main(run: RunDir, rank: int) -> int:
    try:
        cfg = load_resolved(run.config)
        # Own the preemption signal from the first moment: its default action kills the process.
        if cfg.job.preemptible:
            signals.install(signals.preemption_signals(cfg.cluster.signal))
        import_user_code(cfg, run)  # and the Lightning namespace, before anything of launch imports it
        if cfg.job.script:
            from launcher.runtime.script import run_script as train
        else:
            from launcher.runtime.fit import train

        train(cfg, run, rank)
        close_process_group()
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded, then re-raised as exit 1
        if isinstance(exc, SystemExit) and exc.code in (0, None):
            raise
        text = traceback.format_exc()
        message = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else ""
        echo = ECHO.search(f"{type(exc).__name__}: {message}") is not None
        if type(exc).__name__ == "PreflightFailed":  # one line; the rank that failed says what, the others nothing
            if echo:
                output.report_error(text, None, console=False)
            else:
                output.report_error(text, f"{message} (stopped before training; logs/rank-{rank}.log)")
        elif echo:  # gloo's or NCCL's words for a peer that went away: the cause is another rank's
            message = peer_words(message)
            output.report_error(text, f"lost its peers in a collective ({message}): another rank ended or hung first; "
                                      f"the traceback is in logs/rank-{rank}.log")
        else:
            output.report_error(text)
        record = RankError(rank, host_name(), type(exc).__name__, message, text)
        try:
            atomic_write_text(run.error_record(rank), record.dumps(indent=1))
        except OSError:
            pass
        return 1
    return 0


def peer_words(message: str) -> str:
    """gloo's message without its source location and advice: `Read error [127.0.0.1]:25488:
    Connection reset by peer`."""
    message = re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", message)
    return message.split(". This is typically caused", 1)[0].rstrip(".")


def close_process_group() -> None:
    """Tear the process group down before the interpreter exits.

    Left to exit-time destructors, gloo's background threads are sometimes destroyed while
    joinable, and the process aborts ("terminate called without an active exception") after the
    run has already succeeded.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
