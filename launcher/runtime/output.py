"""Rank-aware output for every process of a job.

- Every rank's complete output (Python and C level) goes to `logs/rank-N.log`.
- The console (what torchrun or srun shows, and `console.log`) gets rank zero's output, and
  warnings and errors from every rank prefixed `[rank N]`; other ranks' ordinary prints stay in
  their own log.

This must be installed before torch or Lightning are imported: Lightning's logging handler keeps
a reference to whatever `sys.stderr` is when it is imported.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TextIO


def rank_from_env() -> tuple[int, int]:
    """(global rank, local rank) from torchrun or srun, before any process group exists."""
    for rank_var, local_var in (("RANK", "LOCAL_RANK"), ("SLURM_PROCID", "SLURM_LOCALID")):
        if rank_var in os.environ:
            return int(os.environ[rank_var]), int(os.environ.get(local_var, "0"))
    return 0, 0


class RankStream(io.TextIOBase):
    """Writes everything to the rank log; to the console too, optionally with a prefix."""

    def __init__(self, log: TextIO, console: TextIO | None, prefix: str) -> None:
        self._log, self._console, self._prefix = log, console, prefix
        self._line_start = True

    def write(self, text: str) -> int:
        self._log.write(text)
        if self._console is not None and text:
            self._console.write(self._tag(text) if self._prefix else text)
        return len(text)

    def write_tagged(self, text: str, tag: str) -> None:
        """Always to the console (any rank), every line tagged: for errors and warnings."""
        self._log.write(text)
        console = self._console or _CONSOLE_ERR
        if console is not None:
            body = "".join(f"{tag}{line}" for line in text.splitlines(keepends=True))
            console.write(body if body.endswith("\n") else body + "\n")
            console.flush()

    def write_log_only(self, text: str) -> None:
        """To the rank log alone (what the console says in one line elsewhere)."""
        self._log.write(text)

    def _tag(self, text: str) -> str:
        out = []
        for line in text.splitlines(keepends=True):
            out.append((self._prefix if self._line_start else "") + line)
            self._line_start = line.endswith("\n")
        return "".join(out)

    def flush(self) -> None:
        self._log.flush()
        if self._console is not None:
            self._console.flush()

    def fileno(self) -> int:
        return self._log.fileno()

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


_CONSOLE_ERR: TextIO | None = None
_RANK = 0


def install(log_path: Path, rank: int) -> None:
    """Route this process's output as described in the module docstring."""
    global _CONSOLE_ERR, _RANK
    _RANK = rank
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    console_out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    console_err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log_fd, 1)  # C-level output (gloo, NCCL, CUDA) lands in the rank log
    os.dup2(log_fd, 2)
    os.close(log_fd)
    log = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    _CONSOLE_ERR = console_err
    sys.stdout = RankStream(log, console_out if rank == 0 else None, "")
    sys.stderr = RankStream(log, console_err, "" if rank == 0 else f"[rank {rank}] ")
    warnings.showwarning = _show_warning


def tag() -> str:
    return f"[rank {_RANK}] "


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    text = warnings.formatwarning(message, category, filename, lineno, line)
    stream = sys.stderr
    if isinstance(stream, RankStream):
        stream.write_tagged(text, tag())
    else:
        stream.write(tag() + text)


# Lightning's info lines that launch makes untrue or that advertise (dropped): an advert at every
# Trainer, and a note at every save that launch's own checkpoints make on purpose
MOOT_INFO = ("💡 Tip: For seamless cloud logging", "`weights_only` was not set, defaulting to `False`")


class RankLogHandler(logging.Handler):
    """Lightning's log lines: info once (rank zero's console), warnings from every rank, tagged.

    Lightning logs some info lines on every rank; on other ranks they go to the rank log only.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno < logging.WARNING and str(record.msg).startswith(MOOT_INFO))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record) + "\n"
        except Exception:  # noqa: BLE001 - logging must never take the job down
            self.handleError(record)
            return
        stream = sys.stderr
        if not isinstance(stream, RankStream):
            stream.write(text)
        elif record.levelno >= logging.WARNING:
            stream.write_tagged(text, tag())
        elif _RANK == 0:
            stream.write(text)
        else:
            stream._log.write(text)


def route_logging(*logger_names: str) -> None:
    """Replace these loggers' stream handlers (Lightning adds one at import) with RankLogHandler."""
    for name in logger_names:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler):
                logger.removeHandler(handler)
        logger.addHandler(RankLogHandler())


def report_error(text: str, line: str | None = None, console: bool = True) -> None:
    """A rank's failure: its traceback to the console (tagged) and the rank log; or, given `line`,
    that one line to the console and the traceback to the rank log only; not `console`: the rank
    log only."""
    stream = sys.stderr
    if not isinstance(stream, RankStream):
        stream.write(text if line is None else f"{line}\n{text}")
    elif not console:
        stream.write_log_only(text)
    elif line is None:
        stream.write_tagged(text, tag())
    else:
        stream.write_log_only(text)
        stream.write_tagged(line + "\n", tag())
