"""Checkpoint files written atomically, with a full disk reported as such."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from launcher.rundir import atomic_open


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
