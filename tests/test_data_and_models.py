"""The example datamodules on real on-disk data, and the example models' shapes (in-process)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.digits import DigitsDataModule
from datamodules.mnist import MNISTDataModule
from models.cnn import SmallCNN
from models.mlp import MLP
from models.resnet import ResNet18
from tests.helpers.idx import write_tiny_mnist


def test_mnist_datamodule_reads_the_real_idx_format(tmp_path) -> None:
    data = write_tiny_mnist(tmp_path, n_train=60, n_test=20)
    dm = MNISTDataModule(data_dir=str(tmp_path), batch_size=8, val_size=10, num_workers=0)
    dm.prepare_data()  # download=True, but the files are there: no network is touched
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (50, 10, 20)
    x, y = dm.test_set[3]
    assert x.shape == (1, 28, 28) and y == int(data["test_labels"][3])
    expected = (torch.from_numpy(data["test_images"][3].astype(np.float32)) / 255 - 0.1307) / 0.3081
    torch.testing.assert_close(x[0], expected)
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (8, 1, 28, 28) and yb.dtype == torch.int64
    # train and val are disjoint and together the whole training file
    assert sorted(dm.train_set.indices + dm.val_set.indices) == list(range(60))


def test_mnist_in_memory_gives_the_same_batches_as_the_transform_path(tmp_path) -> None:
    write_tiny_mnist(tmp_path, n_train=60, n_test=20)
    plain = MNISTDataModule(data_dir=str(tmp_path), batch_size=8, val_size=10, num_workers=0)
    fast = MNISTDataModule(data_dir=str(tmp_path), batch_size=8, val_size=10, num_workers=0, in_memory=True)
    for dm in (plain, fast):
        dm.setup("fit")
    assert fast.train_set.indices == plain.train_set.indices
    for make in ("val_dataloader", "test_dataloader"):
        a, b = list(getattr(plain, make)()), list(getattr(fast, make)())
        assert len(a) == len(b) > 1
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            torch.testing.assert_close(xb, xa)
            assert torch.equal(ya, yb) and xb.shape == xa.shape == (len(ya), 1, 28, 28)
    torch.manual_seed(0)
    xa, ya = next(iter(plain.train_dataloader()))
    torch.manual_seed(0)
    xb, yb = next(iter(fast.train_dataloader()))  # the same shuffle draws the same samples
    torch.testing.assert_close(xb, xa)
    assert torch.equal(ya, yb)


def test_mnist_without_files_and_without_network_fails_loudly(tmp_path) -> None:
    dm = MNISTDataModule(data_dir=str(tmp_path), num_workers=0)
    with pytest.raises(RuntimeError):
        dm.setup("fit")


def test_digits_prepare_writes_once_and_splits_are_disjoint(tmp_path) -> None:
    dm = DigitsDataModule(data_dir=str(tmp_path), val_size=101, test_size=100)
    dm.prepare_data()
    stamp = dm.file.stat().st_mtime_ns
    dm.prepare_data()
    assert dm.file.stat().st_mtime_ns == stamp
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (1797 - 201, 101, 100)
    x, y = dm.val_set[0]
    assert x.shape == (1, 8, 8) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # every rank computes the same split on its own: it must not depend on any global RNG
    torch.manual_seed(1234)
    again = DigitsDataModule(data_dir=str(tmp_path), val_size=101, test_size=100)
    again.setup("fit")
    assert torch.equal(again.val_set.tensors[0], dm.val_set.tensors[0])
    assert torch.equal(again.train_set.tensors[1], dm.train_set.tensors[1])


@pytest.mark.parametrize(
    "model,shape",
    [(MLP(in_features=64), (4, 1, 8, 8)), (SmallCNN(), (4, 1, 28, 28)), (ResNet18(), (2, 3, 32, 32))],
    ids=["mlp", "cnn", "resnet18"],
)
def test_models_map_inputs_to_ten_logits_and_train(model, shape) -> None:
    x, y = torch.randn(shape), torch.randint(0, 10, (shape[0],))
    assert model(x).shape == (shape[0], 10)
    opt = model.configure_optimizers()
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
