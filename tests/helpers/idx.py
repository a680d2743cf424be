"""Write MNIST-format IDX files (the real on-disk format torchvision reads)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_tiny_mnist(root: Path, n_train: int = 60, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte, with random digits."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    data = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    write_idx(raw / "train-images-idx3-ubyte", data["train_images"])
    write_idx(raw / "train-labels-idx1-ubyte", data["train_labels"])
    write_idx(raw / "t10k-images-idx3-ubyte", data["test_images"])
    write_idx(raw / "t10k-labels-idx1-ubyte", data["test_labels"])
    return data
