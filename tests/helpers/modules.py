"""Test subjects: plain Lightning modules that record what happened to them on disk."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import torch
from pytorch_lightning import Callback
from torchmetrics import SumMetric

from datamodules.digits import DigitsDataModule
from models.cnn import SmallCNN
from models.mlp import MLP


def _record(path: Path, what: str) -> None:
    line = f"{what} rank={os.environ.get('RANK')} node={os.environ.get('GROUP_RANK')} t={time.time():.6f}\n"
    with open(path, "a") as fh:
        fh.write(line)


class CountingDigits(DigitsDataModule):
    """Digits that log each prepare_data/setup call to `count_dir`, and talk on every rank."""

    def __init__(self, count_dir: str, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.count_dir = Path(count_dir)

    def prepare_data(self) -> None:
        _record(self.count_dir / "prepare.txt", "prepare")
        time.sleep(1.0)  # a slow download: no rank may read before it is done
        super().prepare_data()

    def setup(self, stage: str | None = None) -> None:
        _record(self.count_dir / "setup.txt", f"setup-{getattr(stage, 'value', stage)}")
        rank = os.environ.get("RANK")
        print(f"hello from rank {rank}")
        warnings.warn(f"careful from rank {rank}", stacklevel=2)
        super().setup(stage)


class CountingMLP(MLP):
    """Logs how many validation samples it saw, and a constant 1.0 through a sync_dist mean."""

    def __init__(self, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.val_count = SumMetric()

    def validation_step(self, batch, batch_idx: int) -> None:  # noqa: ANN001
        super().validation_step(batch, batch_idx)
        n = len(batch[1])
        self.val_count.update(torch.tensor(float(n)))
        self.log("val_count", self.val_count, on_epoch=True)
        self.log("val_const", 1.0, on_epoch=True, sync_dist=True, batch_size=n)


class FailingMLP(MLP):
    """Rank 1 raises in its third training step."""

    def training_step(self, batch, batch_idx: int):  # noqa: ANN001, ANN201
        if self.global_rank == 1 and batch_idx == 2:
            raise RuntimeError("boom on rank 1")
        return super().training_step(batch, batch_idx)


class UnusedParameterMLP(MLP):
    """An MLP with a layer its forward never uses: its parameters get no gradient in any step."""

    def __init__(self, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.unused = torch.nn.Linear(4, 4)


class ReportingMLP(MLP):
    """Every rank writes the metrics it ended with (and its world size) to `report_dir`."""

    def __init__(self, report_dir: str, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.report_dir = report_dir

    def _report(self, stage: str) -> None:
        import json

        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items()}
        record = {"rank": self.global_rank, "world_size": self.trainer.world_size, "metrics": metrics,
                  "node": os.environ.get("SLURMD_NODENAME"), "env": type(self.trainer.strategy.cluster_environment).__name__}
        Path(self.report_dir, f"{stage}-rank-{self.global_rank}.json").write_text(json.dumps(record))

    def on_fit_end(self) -> None:
        self._report("fit")

    def on_test_end(self) -> None:
        self._report("test")


class StepSleep:
    """Mixed in before a LightningModule: a sleep of `step_sleep` seconds at the start of every
    training step, outside forward (time to preempt the run mid-epoch)."""

    def __init__(self, step_sleep: float = 0.0, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.step_sleep = step_sleep

    def training_step(self, batch, batch_idx: int):  # noqa: ANN001, ANN201
        if self.step_sleep:
            time.sleep(self.step_sleep)
        return super().training_step(batch, batch_idx)


class StragglingMLP(MLP):
    """The example MLP where every rank sleeps `base_sleep` seconds in every training step (the
    same work everywhere, which the CPU time of ranks sharing few cores is not), and from optimizer
    step `slow_from_step` on, rank `slow_rank` sleeps `step_sleep` more: a straggler, which every
    other rank waits for in the gradient all-reduce."""

    def __init__(self, slow_rank: int = -1, step_sleep: float = 0.0, base_sleep: float = 0.0, slow_from_step: int = 0,
                 slow_marker: str = "", **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.slow_rank, self.step_sleep, self.base_sleep, self.slow_from_step = (slow_rank, step_sleep, base_sleep,
                                                                                 slow_from_step)
        self.slow_marker = slow_marker  # where the slow rank writes when it began to be slow

    def training_step(self, batch, batch_idx: int):  # noqa: ANN001, ANN201
        slow = self.global_rank == self.slow_rank and self.global_step >= self.slow_from_step
        if slow and self.slow_marker and not os.path.exists(self.slow_marker):
            Path(self.slow_marker).write_text(f"{time.time():.3f}")
        time.sleep(self.base_sleep + (self.step_sleep if slow else 0.0))
        return super().training_step(batch, batch_idx)


class PreemptableMLP(StepSleep, MLP):
    """Dropout, a step LR schedule, torchmetrics, EarlyStopping; slow enough to preempt mid-epoch."""

    def training_step(self, batch, batch_idx: int):  # noqa: ANN001, ANN201
        # randomness beyond dropout, on every rank, to prove each rank's RNG comes back
        noise = torch.randn(()) * 1e-3
        self.log("train_noise", noise, on_step=True, on_epoch=True, sync_dist=True)
        return super().training_step(batch, batch_idx) + 0 * noise

    def configure_optimizers(self):  # noqa: ANN201
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.7)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_callbacks(self):  # noqa: ANN201
        from pytorch_lightning.callbacks import EarlyStopping

        return [EarlyStopping(monitor="val_loss", patience=50, mode="min")]


class BigPreemptableMLP(PreemptableMLP):
    """The same model carrying a large buffer, so that writing a checkpoint takes a while."""

    def __init__(self, ballast_mb: int = 200, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.register_buffer("ballast", torch.zeros(ballast_mb * 1024 * 1024 // 4))


class HangingMLP(MLP):
    """Rank 1 stops making progress in its third training step (a deadlock, a stuck filesystem);
    with `once_marker`, only while that file does not exist (it writes it: one attempt hangs)."""

    def __init__(self, once_marker: str = "", **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.once_marker = once_marker

    def training_step(self, batch, batch_idx: int):  # noqa: ANN001, ANN201
        if self.global_rank == 1 and batch_idx == 2 and not (self.once_marker and Path(self.once_marker).exists()):
            if self.once_marker:
                Path(self.once_marker).write_text("hung")
            print("rank 1 hangs now", flush=True)
            while True:
                time.sleep(0.5)
        return super().training_step(batch, batch_idx)


class EchoMLP(MLP):
    """Every rank writes what reached it (an init arg, an env value, its run dir) to `report_dir`."""

    def __init__(self, note: str, report_dir: str, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.note, self.report_dir = note, report_dir

    def on_fit_start(self) -> None:
        seen = {"note": self.note, "weird": os.environ.get("WEIRD"), "run_dir": os.environ.get("LAUNCH_RUN_DIR"),
                "token": os.environ.get("MY_API_TOKEN")}
        Path(self.report_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.report_dir) / f"rank-{self.global_rank}.json").write_text(json.dumps(seen))


class SlowMLP(StepSleep, MLP):
    """The example MLP with a sleep per training step (time to preempt it), and nothing else added."""


class SlowCNN(StepSleep, SmallCNN):
    """The example CNN with a sleep per training step, outside the compiled forward."""


class EpochScheduledMLP(StepSleep, MLP):
    """The model's own configure_optimizers: SGD with momentum and a StepLR stepped per epoch."""

    def configure_optimizers(self):  # noqa: ANN201
        optimizer = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class StepSyncValidationMLP(MLP):
    """Logs a per-step synchronised value in validation (ranks may run different batch counts)."""

    def validation_step(self, batch, batch_idx: int) -> None:  # noqa: ANN001
        super().validation_step(batch, batch_idx)
        self.log("val_step_count", float(len(batch[1])), on_step=True, on_epoch=False, sync_dist=True)


class EpochGatheringMLP(MLP):
    """Runs collectives of its own at each training epoch's end, as a model that gathers its
    predictions or logs synchronised epoch values does: an all_gather, and a log with sync_dist."""

    def on_train_epoch_end(self) -> None:
        ranks = self.all_gather(torch.tensor(float(self.global_rank)))
        self.log("gathered_ranks", ranks.sum(), sync_dist=False, rank_zero_only=False)
        self.log("rank_sum", float(self.global_rank), sync_dist=True, reduce_fx="sum")


class SlowTestMLP(PreemptableMLP):
    """PreemptableMLP whose test takes a few seconds (time to signal it there)."""

    def on_test_start(self) -> None:
        print("testing now", flush=True)

    def test_step(self, batch, batch_idx: int) -> None:  # noqa: ANN001
        time.sleep(0.5)
        super().test_step(batch, batch_idx)


class CountingLossMLP(MLP):
    """Keeps a plain counter (outside its state_dict) that scales the loss: a resumed attempt
    starts it at 0 again, so it trains differently from an uninterrupted run."""

    def __init__(self, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.seen = 0

    def training_step(self, batch, batch_idx: int):  # noqa: ANN001, ANN201
        self.seen += 1
        return super().training_step(batch, batch_idx) * (1.0 + 0.01 * self.seen)



class BatchCounter(Callback):
    """A user callback ([[callbacks]]) with state: the training batches it has seen, and a running
    sum of their losses. Without its state restored, a resumed run counts only what came after."""

    def __init__(self, report: str) -> None:
        self.report, self.batches, self.loss_sum = report, 0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:  # noqa: ANN001
        self.batches += 1
        self.loss_sum += float(outputs["loss"])

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        if trainer.is_global_zero:
            Path(self.report).write_text(json.dumps({"batches": self.batches, "loss_sum": self.loss_sum}))

    def state_dict(self) -> dict:
        return {"batches": self.batches, "loss_sum": self.loss_sum}

    def load_state_dict(self, state: dict) -> None:
        self.batches, self.loss_sum = state["batches"], state["loss_sum"]


def last_ckpt_linked(directory: Path) -> bool:
    """Is `directory`'s last.ckpt one of its epoch checkpoints under another name (one inode)?"""
    inode = (directory / "last.ckpt").stat().st_ino
    return any(p.stat().st_ino == inode for p in directory.glob("epoch=*.ckpt"))


class LastCheckpointProbe(Callback):
    """Rank zero, after each epoch's checkpoints (at the next epoch's start, and at the end of
    training, before launch's final save): is last.ckpt the top-k file of its step (one inode)?
    Appended to `report` as JSON lines."""

    def __init__(self, report: str) -> None:
        self.report = report

    def _look(self, trainer) -> None:  # noqa: ANN001
        directory = Path(trainer.checkpoint_callback.dirpath)
        if trainer.is_global_zero and (directory / "last.ckpt").exists():
            with open(self.report, "a") as fh:
                fh.write(json.dumps({"epoch": trainer.current_epoch, "linked": last_ckpt_linked(directory)}) + "\n")

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self._look(trainer)

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self._look(trainer)


class SampleRecordingMLP(PreemptableMLP):
    """Writes which samples each rank trained at each optimizer step (a digest of each input row)
    to `record_dir`, and logs the loss over every rank's batch (sync_dist: the global batch's mean)."""

    def __init__(self, record_dir: str, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.record_dir = record_dir

    def training_step(self, batch, batch_idx: int):  # noqa: ANN001, ANN201
        import hashlib

        x, y = batch
        digests = [hashlib.sha1(row.numpy().tobytes()).hexdigest()[:12] for row in x.detach().cpu()]
        with open(Path(self.record_dir, f"rank-{self.global_rank}.jsonl"), "a") as fh:
            fh.write(json.dumps({"step": int(self.trainer.global_step), "epoch": int(self.current_epoch),
                                 "samples": digests}) + "\n")
        loss = super().training_step(batch, batch_idx)
        self.log("global_loss", loss, on_step=True, on_epoch=False, sync_dist=True, batch_size=len(y))
        return loss


class ProbedMLP(PreemptableMLP):
    """Records, on every rank, what its process is (tests/test_preload.py): its parent's command
    line, the threads torch uses, its environment's rank as torchmetrics and Lightning see it, its
    command line, its allocator's settings and what a step's allocations cost it in page faults;
    and an exit handler that writes a file when the interpreter's exit handlers run."""

    def __init__(self, probe_dir: str = "", **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.probe_dir = probe_dir

    def setup(self, stage: str) -> None:
        import atexit
        import json
        import multiprocessing
        import os
        import sys

        from lightning_utilities.core.rank_zero import rank_zero_only
        from torchmetrics.utilities.prints import rank_zero_only as metrics_rank_zero_only

        from tests.helpers.allocs import step_faults

        rank = int(os.environ["RANK"])
        parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        probe = {"rank": rank, "pid": os.getpid(), "parent": parent, "threads": torch.get_num_threads(),
                 "omp": os.environ.get("OMP_NUM_THREADS"), "argv": sys.argv, "lightning_rank": rank_zero_only.rank,
                 "torchmetrics_rank": metrics_rank_zero_only.rank, "local_rank": int(os.environ["LOCAL_RANK"]),
                 "start_method": multiprocessing.get_start_method(), "step_faults": step_faults(),
                 "malloc": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}}
        Path(self.probe_dir, f"rank-{rank}.json").write_text(json.dumps(probe))
        atexit.register(Path(self.probe_dir, f"exit-{rank}").write_text, "the exit handlers ran")
