"""Checkpoint size and write time: launch's atomic write (temp file, fsync, rename) versus a plain
torch.save to the final path, for the digits MLP and the CIFAR-10 ResNet-18, with optimizer state.

    python bench/checkpoint_io.py [--repeats 5]

Prints, per model: size, median write time of each, and the ratio atomic / plain last.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
from launcher.runtime.checkpoint_io import AtomicCheckpointIO
from models.mlp import MLP
from models.resnet import ResNet18


def checkpoint_of(model: torch.nn.Module, shape: tuple[int, ...]) -> dict:
    opt = model.configure_optimizers()
    x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()  # optimizer moments exist, as in a real mid-training checkpoint
    return {"state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()], "global_step": 1}


def timed(fn, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    io = AtomicCheckpointIO()
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, shape in (("digits MLP", MLP(in_features=64), (32, 1, 8, 8)),
                                   ("CIFAR-10 ResNet-18", ResNet18(), (8, 3, 32, 32))):
            ckpt = checkpoint_of(model, shape)
            atomic_path, plain_path = Path(tmp, "atomic.ckpt"), Path(tmp, "plain.ckpt")
            atomic = timed(lambda c=ckpt, p=atomic_path: io.save_checkpoint(c, p), args.repeats)
            plain = timed(lambda c=ckpt, p=plain_path: torch.save(c, p), args.repeats)
            size = atomic_path.stat().st_size
            print(f"{name}: {size / 1e6:.2f} MB; atomic write {atomic * 1000:.1f} ms, "
                  f"plain torch.save {plain * 1000:.1f} ms; ratio atomic/plain {atomic / plain:.2f}")


if __name__ == "__main__":
    main()
