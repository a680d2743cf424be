"""Lightning's per-step dispatch as shipped against launch's fast paths (launcher/runtime/
lightning_step_compat.py), and the training sampler's keys, each timed alone in one process:

    python bench/hook_dispatch.py [--calls 20000]

Inside a real fit (a Trainer with 8 callbacks, one of which overrides the timed hook), it times a
module hook call, a strategy hook call, a callback hook call and `self.log`'s move of a record
already on the value's device, with Lightning's own functions and with launch's, and prints each
pair's us a call and ratio. Then the sampler: an epoch of a rank's keys that carry their samples'
seeds (job.seed_per_sample) against DistributedSampler's plain indices, in us a batch of 64.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from launcher.runtime import lightning_step_compat as fast  # noqa: E402
from launcher.runtime.lightning_api import Callback, LightningModule, Trainer, module  # noqa: E402
from launcher.runtime.samplers import ResumableDistributedSampler  # noqa: E402

CALL, RESULT = module("trainer.call"), module("trainer.connectors.logger_connector.result")
PROFILER = module("profilers").PassThroughProfiler


def dispatch() -> dict[str, object]:
    return {"module hook": CALL._call_lightning_module_hook, "strategy hook": CALL._call_strategy_hook,
            "callback hooks": CALL._call_callback_hooks, "record move": RESULT._ResultMetric.to,
            "profile": PROFILER.profile}


SHIPPED = dispatch()
fast.lighten_step_bookkeeping()
LIGHTENED = dispatch()


class Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):  # noqa: ANN001, ANN201
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):  # noqa: ANN201
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(torch.randn(8, 4)), batch_size=4)

    def on_before_zero_grad(self, optimizer) -> None:  # noqa: ANN001
        pass


class Timing(Callback):
    def __init__(self, calls: int) -> None:
        self.calls = calls

    def on_before_zero_grad(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
        pass

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        record = RESULT._ResultMetric(RESULT._Metadata(fx="training_step", name="loss"), True)
        record.update(torch.tensor(1.0), 4)
        cpu = torch.device("cpu")
        calls = {"module hook": lambda f: f(trainer, "on_before_zero_grad", None),
                 "strategy hook": lambda f: f(trainer, "barrier"),
                 "callback hooks": lambda f: f(trainer, "on_before_zero_grad", None),
                 "record move": lambda f: f(record, cpu)}
        for name, call in calls.items():
            shipped, lightened = (self.us(table, lambda fn=table[name], call=call: call(fn)) for table in (SHIPPED, LIGHTENED))
            print(f"{name:16s} Lightning {shipped:6.2f} us a call, launch {lightened:6.2f} us: ratio {lightened / shipped:.3f}")

    def us(self, table: dict[str, object], fn) -> float:  # noqa: ANN001
        """us a call of `fn`, with the default profiler's blocks as in `table` (shipped or lightened)."""
        PROFILER.profile = table["profile"]
        try:
            return min(timeit.repeat(fn, number=self.calls, repeat=3)) / self.calls * 1e6
        finally:
            PROFILER.profile = LIGHTENED["profile"]


def sampler_keys(epochs: int = 20) -> None:
    data = list(range(4096))
    seeded = ResumableDistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=0, seed_samples=True)
    plain = DistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=0)
    batches = len(seeded) // 64
    for name, sampler in (("keys with seeds", seeded), ("plain indices", plain)):
        spent = min(timeit.repeat(lambda s=sampler: [list(s) for _ in range(epochs)], number=1, repeat=3))
        print(f"sampler, {name:15s} {spent / epochs / batches * 1e6:6.2f} us a batch of 64")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=20000)
    args = parser.parse_args()
    callbacks = [Timing(args.calls)] + [Callback() for _ in range(7)]
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    trainer.fit(Tiny())
    sampler_keys()


if __name__ == "__main__":
    main()
