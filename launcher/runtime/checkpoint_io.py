"""Checkpoint files written atomically, with a full disk reported as such; background writes."""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from launcher.rundir import atomic_open
from launcher.runtime.lightning_api import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Every checkpoint is written to a temp file, fsynced and renamed into place.

    A kill or a full disk while saving leaves the previous checkpoint at that path intact.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = None
        try:
            with atomic_open(path) as fh:
                writer = _ErrorKeepingWriter(fh)
                torch.save(checkpoint, writer)
        except Exception as exc:
            # torch reports a failed write as "unexpected pos"; the OSError underneath says why
            cause = writer.error if writer is not None and writer.error is not None else exc
            if not isinstance(cause, OSError) or cause.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            raise OSError(cause.errno, f"{os.strerror(cause.errno)} while writing checkpoint {path.name}; nothing "
                          f"was replaced: the previous checkpoints in {path.parent} are intact") from exc


class _ErrorKeepingWriter:
    """A file for torch.save that remembers the first OSError of a write (torch replaces it)."""

    def __init__(self, fh: Any) -> None:
        self.fh, self.error = fh, None

    def write(self, data: Any) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        try:
            self.fh.flush()
        except OSError as exc:
            self.error = self.error or exc
            raise


def cpu_copy(obj: Any) -> Any:
    """A copy of a checkpoint whose tensors are new CPU tensors (the rest is shared): what a
    background write may take its time over while training changes the live ones."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [cpu_copy(v) for v in obj]
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(cpu_copy(v) for v in obj)
    return obj


class BackgroundWriter:
    """At most one checkpoint write in flight, in a thread: `start` waits for the previous one,
    `wait` joins it and raises its error (a failed background write is never silent)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.last_write_s: float | None = None  # how long the last background write took

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, write: Callable[[], None]) -> None:
        self.wait()

        def run() -> None:
            began = time.monotonic()
            try:
                write()
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread by wait()
                self._error = exc
            self.last_write_s = time.monotonic() - began

        self._thread = threading.Thread(target=run, name="launch-checkpoint-writer", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error
