"""What Lightning's training loop costs a step in Python, apart from the model's compute: the same
LightningModule (the benchmark's Classifier, its three `self.log` calls and torchmetrics accuracy
each step) with a net so small that the step is almost all framework, in one process.

    python bench/step_python.py [--steps 600] [--repeats 5]

Each repeat runs, each in a fresh process and alternated: the hand-written loop of
bench/plain_ddp.py without DDP (forward, loss, accuracy, the epoch loss's running sums, zero_grad,
backward, AdamW); the module in a plain Lightning Trainer (no logger, checkpoint or progress bar:
Lightning's loop alone); and the same Trainer with launch's fast paths in Lightning
(runtime/lightning_step_compat.py), as launch's ranks run it. It prints each one's median time a
step (us, steps after the first 20) and `self.log`'s time a call, the medians over the repeats, and
what each costs over the loop. Then launch's own data fetch: a batch of 64 through the sampler's
keys with their samples' seeds and the dataset's seeded fetch (job.seed_per_sample) against
DistributedSampler's plain indices and the plain fetch, us a batch. bench/step_overhead.py times
launch's callbacks in place; bench/throughput.py the whole, with DDP, against the loop.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
WARMUP = 20
BATCH = 64
CONFIGS = ("loop", "lightning", "launch")


def _data(samples: int):  # noqa: ANN202
    import torch
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(samples, 16, generator=g), torch.randint(0, 10, (samples,), generator=g))


def _module():  # noqa: ANN202
    from torch import nn

    from models.classifier import Classifier

    class TinyClassifier(Classifier):
        """The benchmark's Classifier (three self.log calls and torchmetrics accuracy a step) on a
        16-feature linear net: what is left of a step is the framework's."""

        def __init__(self) -> None:
            super().__init__(nn.Linear(16, 10), num_classes=10, lr=1e-3, weight_decay=0.0)
            self.starts: list[float] = []

        def on_train_batch_start(self, batch, batch_idx: int) -> None:  # noqa: ANN001
            self.starts.append(time.perf_counter())

    return TinyClassifier()


def _median_step_us(starts: list[float]) -> float:
    steps = [b - a for a, b in zip(starts[:-1], starts[1:], strict=True)]
    return 1e6 * statistics.median(steps[WARMUP:])


def _nvml_check_off() -> None:
    """Importing Lightning turns torch's NVML-based CUDA check on; off again, as a CPU rank of launch
    has it (runtime/build.py) and a loop without Lightning would: else every optimizer step loads
    NVML (about 75 us here), in all three configurations alike."""
    os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)


def one(config: str, steps: int) -> dict[str, float]:
    """One configuration in this process: its median step and self.log's time a call (us)."""
    import torch
    from torch.utils.data import DataLoader

    from bench.common import hand_written_step
    from launcher.runtime.lightning_api import LightningModule, Trainer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    loader = DataLoader(_data(steps * BATCH), batch_size=BATCH, shuffle=True)
    model = _module()
    _nvml_check_off()
    if config == "loop":
        optimizer, accuracy = model.configure_optimizers(), model.train_acc
        loss_sum, samples = torch.zeros(()), torch.zeros(())
        for x, y in loader:
            model.starts.append(time.perf_counter())
            hand_written_step(model, accuracy, optimizer, x, y, loss_sum, samples)
        return {"step_us": _median_step_us(model.starts), "log_us": 0.0}

    if config == "launch":
        from launcher.runtime import lightning_step_compat

        lightning_step_compat.lighten_step_bookkeeping()
    spent = [0.0, 0]
    log = LightningModule.log

    def timed_log(self, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        start = time.perf_counter()
        try:
            log(self, *args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start
            spent[1] += 1

    LightningModule.log = timed_log
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0)
    trainer.fit(model, loader)
    return {"step_us": _median_step_us(model.starts), "log_us": 1e6 * spent[0] / max(1, spent[1])}


def fetch(epochs: int = 6) -> dict[str, float]:
    """us a batch of 64: a rank's keys with seeds and the seeded fetch, then plain indices and fetch."""
    from torch.utils.data import DataLoader, DistributedSampler

    from launcher.runtime import samplers

    def median_batch_us(loader: DataLoader) -> float:
        times = []
        for epoch in range(epochs):
            loader.sampler.set_epoch(epoch)
            batches = iter(loader)
            while True:
                start = time.perf_counter()
                try:
                    next(batches)
                except StopIteration:
                    break
                times.append(time.perf_counter() - start)
        return 1e6 * statistics.median(times)

    plain_data, seeded_data = _data(4096), _data(4096)
    assert samplers.seed_each_sample(seeded_data)
    plain = DataLoader(plain_data, batch_size=BATCH,
                       sampler=DistributedSampler(plain_data, num_replicas=2, rank=0, shuffle=True, seed=0))
    seeded = DataLoader(seeded_data, batch_size=BATCH, sampler=samplers.ResumableDistributedSampler(
        seeded_data, num_replicas=2, rank=0, shuffle=True, seed=0, seed_samples=True))
    runs = [(median_batch_us(plain), median_batch_us(seeded)) for _ in range(3)]
    return {"plain_us": statistics.median(r[0] for r in runs), "seeded_us": statistics.median(r[1] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", choices=CONFIGS, help=argparse.SUPPRESS)  # a child: one configuration
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.steps)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results: dict[str, list[dict[str, float]]] = {config: [] for config in CONFIGS}
    for i in range(args.repeats):
        order = CONFIGS[i % 3:] + CONFIGS[:i % 3]
        for config in order:
            out = subprocess.run([sys.executable, __file__, "--one", config, "--steps", str(args.steps)], env=env,
                                 cwd=REPO, check=True, capture_output=True, text=True).stdout
            results[config].append(json.loads(out.strip().splitlines()[-1]))
        print(f"repeat {i + 1}: " + ", ".join(f"{c} {results[c][-1]['step_us']:.0f} us" for c in CONFIGS), flush=True)
    step = {c: statistics.median(r["step_us"] for r in results[c]) for c in CONFIGS}
    log = {c: statistics.median(r["log_us"] for r in results[c]) for c in CONFIGS}
    print(f"a step, median of {args.repeats} (us): hand-written loop {step['loop']:.0f}, plain Lightning "
          f"{step['lightning']:.0f} (+{step['lightning'] - step['loop']:.0f}), Lightning with launch's fast paths "
          f"{step['launch']:.0f} (+{step['launch'] - step['loop']:.0f})")
    print(f"self.log, a call (us): plain Lightning {log['lightning']:.1f}, with launch's fast paths {log['launch']:.1f} "
          f"(3 calls a step: {3 * log['launch']:.0f} us of launch's +{step['launch'] - step['loop']:.0f})")
    data = fetch()
    print(f"data, a batch of {BATCH} (us): plain indices and fetch {data['plain_us']:.0f}, keys with seeds and the "
          f"seeded fetch {data['seeded_us']:.0f} (+{data['seeded_us'] - data['plain_us']:.0f})")


if __name__ == "__main__":
    main()
