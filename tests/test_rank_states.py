"""The ranks' checkpoint state reaches rank zero whole: raw-byte tensors, gathered to rank zero only."""

from __future__ import annotations

import collections
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics.classification import MulticlassAccuracy

from launcher.runtime import lightning_compat as compat
from launcher.runtime.preemption import _rng_state
from launcher.runtime.rank_states import _Bytes, gather_to_rank_zero, pack, unpack

Point = collections.namedtuple("Point", "x y")


def a_rank_s_state(rank: int) -> dict[str, Any]:
    """What PreemptionHandler gathers (RNG states, a Metric's state), drawn from this rank's seed,
    and tensors of every kind a state may hold."""
    torch.manual_seed(rank), np.random.seed(rank), random.seed(rank)
    torch.randn(3), np.random.randn(1), random.random()  # numpy's cached gaussian is part of its state
    accuracy = MulticlassAccuracy(num_classes=5, average="micro")
    accuracy.update(torch.randint(0, 5, (16 + rank,)), torch.randint(0, 5, (16 + rank,)))
    odd = {
        "bf16": torch.randn(4, 3).to(torch.bfloat16),
        "bits": torch.tensor([float("nan"), -0.0, float("inf"), 1e-45]),  # NaN, negative zero, a subnormal
        "bool": torch.rand(7) > 0.5,
        "scalar": torch.tensor(rank, dtype=torch.int64),
        "empty": torch.empty(0, 3),
        "strided": torch.arange(12.0).reshape(3, 4).t(),  # not contiguous
        "complex": torch.randn(2, dtype=torch.complex64),
        "grad": torch.ones(2, requires_grad=True),  # pickled whole, as before
        "point": Point(torch.ones(2), 3),  # a namedtuple: left whole, keeps its type
        "tuple": (torch.zeros(1, dtype=torch.uint8), "text", None),
        "list": [np.arange(3), {"deep": torch.full((2,), rank, dtype=torch.int16)}],
    }
    return {"rank": rank, "rng": _rng_state(), "metrics": {"acc": compat.metric_state(accuracy)}, "odd": odd}


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Equal, bit for bit, and of the same types, all the way down."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.requires_grad) == (b.dtype, b.shape, b.requires_grad), where
        assert a.detach().contiguous().reshape(-1).view(torch.uint8).tolist() == \
            b.detach().contiguous().reshape(-1).view(torch.uint8).tolist(), f"{where}: bytes differ"
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def test_a_packed_state_unpickles_to_the_same_values_bit_for_bit() -> None:
    state = a_rank_s_state(2)
    packed = pack(state)
    assert type(packed["rng"]["torch"]) is _Bytes and type(packed["odd"]["strided"]) is _Bytes
    assert type(packed["odd"]["grad"]) is torch.Tensor and type(packed["odd"]["point"]) is Point
    assert_same(unpack(pickle.loads(pickle.dumps(packed))), state)
    # and what all_gather_object's pickling gave before
    assert_same(unpack(pickle.loads(pickle.dumps(packed))), pickle.loads(pickle.dumps(state)))


def a_rank(rank: int, world: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    mine = a_rank_s_state(rank)
    before = [None] * world
    dist.all_gather_object(before, mine)  # what launch gathered with until now
    gathered = gather_to_rank_zero(mine, world)
    if rank == 0:
        assert gathered is not None and len(gathered) == world
        for r in range(world):
            assert_same(gathered[r], before[r], f"rank {r}")
            assert_same(gathered[r], a_rank_s_state(r), f"rank {r}, drawn again")
        Path(out).write_text("checked")
    else:
        assert gathered is None
    dist.destroy_process_group()


def test_three_ranks_states_reach_rank_zero_alone_as_all_gather_object_delivered_them(tmp_path: Path) -> None:
    out = tmp_path / "rank0"
    mp.start_processes(a_rank, args=(3, str(tmp_path / "store"), str(out)), nprocs=3, start_method="spawn")
    assert out.read_text() == "checked"
