"""`job.fingerprints`: every rank records, at the start of every training batch, a digest of each
piece of state the batch will use, for `launch verify` to find the first one that diverged.

Recorded after launch's own restore at a resumed batch (this callback comes after the preemption
handler), so a resumed attempt's first record shows what it really starts from. One JSON line a
batch, appended to `fingerprints/rank-N.jsonl`; a step trained again after a crash is recorded
again, and the later record is the one that counts.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric

from launcher.runtime import lightning_compat as compat
from launcher.runtime.lightning_api import Callback, LightningModule, Trainer

PRIMITIVE = (bool, int, float, str)


def digest_tensors(value: Any) -> str:
    h = hashlib.sha256()

    def feed(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            t = v.to_local() if hasattr(v, "to_local") else v  # FSDP: this rank's shard of a DTensor
            t = t.detach().cpu().contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(v, dict):
            for k in sorted(v, key=str):
                h.update(str(k).encode())
                feed(v[k])
        elif isinstance(v, (list, tuple)):
            for x in v:
                feed(x)
        else:
            h.update(repr(v).encode())

    feed(value)
    return h.hexdigest()[:16]


def model_attributes(module: LightningModule) -> dict[str, Any]:
    """The module's own public plain values (a counter, a flag, a running number): state that a
    checkpoint's state_dict does not hold."""
    return {k: v for k, v in sorted(vars(module).items()) if not k.startswith("_") and isinstance(v, PRIMITIVE)}


def metric_states(module: LightningModule) -> dict[str, str]:
    return {name: digest_tensors(compat.metric_state(m)) for name, m in module.named_modules() if isinstance(m, Metric)}


class Fingerprints(Callback):
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        record = {
            "step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            "batch": batch_idx,
            "source": ", ".join(type(getattr(dl, "dataset", dl)).__name__ for dl in compat.train_dataloaders(trainer)),
            "data": digest_tensors(batch),
            "rng": {
                "torch": digest_tensors(torch.get_rng_state()),
                "numpy": hashlib.sha256(pickle.dumps(np.random.get_state())).hexdigest()[:16],
                "python": hashlib.sha256(pickle.dumps(random.getstate())).hexdigest()[:16],
                **({"cuda": digest_tensors(torch.cuda.get_rng_state_all())} if torch.cuda.is_initialized() else {}),
            },
            "lr": [group["lr"] for opt in trainer.optimizers for group in opt.param_groups],
            "metrics": metric_states(pl_module),
            "attributes": model_attributes(pl_module),
            "weights": digest_tensors([p for p in pl_module.parameters()]),
            "optimizer": digest_tensors([opt.state_dict()["state"] for opt in trainer.optimizers]),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"rank-{trainer.global_rank}.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=repr) + "\n")


class KillDrill(Callback):
    """job.drill_kill_at_step: at the start of that step, rank zero SIGKILLs every process of the
    (local) run, itself last: what a machine's crash does. Once per run (a marker file)."""

    def __init__(self, run: Any, step: int) -> None:
        self.run, self.step = run, step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        marker = self.run.fingerprints / f"killed-at-{self.step}"
        if trainer.global_rank != 0 or trainer.global_step != self.step or marker.exists():
            return
        import os
        import signal

        from launcher.processes import processes_of, supervisor_pid

        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(str(self.step))
        for pid in [supervisor_pid(self.run)] + processes_of(self.run):
            if pid is not None and pid != os.getpid():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        os.kill(os.getpid(), signal.SIGKILL)
