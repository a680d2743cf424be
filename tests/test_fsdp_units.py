"""FSDP's parts without a run: which modules become shard units, a sharded model's plain keys, the
rules of resuming on another world size, the checkpoint-completeness rule, background writes."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from launcher import config
from launcher.errors import LaunchError
from launcher.rundir import RunDir, checkpoint_complete
from launcher.runtime.checkpoint_io import BackgroundWriter, cpu_copy
from launcher.runtime.fsdp import ShardingError, shard_units
from launcher.submission import reshape
from tests.helpers.launch import REPO


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.inner(x))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.blocks = nn.Sequential(Block(), nn.Dropout(0.1), Block())
        self.act = nn.ReLU()  # no parameters: never a unit of its own
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.blocks(self.embed(x))))


def test_shard_units_are_the_named_classes_or_each_child_with_parameters() -> None:
    net = Net()
    assert shard_units(net, []) == [net.embed, net.blocks, net.head]
    assert shard_units(net, ["Block"]) == [net.blocks[0], net.blocks[2]]
    with pytest.raises(ShardingError, match=r"no module of class TransformerBlock \(its classes: Block, Dropout, "):
        shard_units(net, ["Block", "TransformerBlock"])


@pytest.fixture
def one_rank(tmp_path: Path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_a_sharded_model_with_activation_checkpointing_keeps_plain_keys_and_trains(one_rank) -> None:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule

    from launcher.runtime.fsdp import shard_model

    torch.manual_seed(0)
    net, plain = Net(), Net()
    plain.load_state_dict(net.state_dict())
    shard_model(net, init_device_mesh("cpu", (1,)), ["Block"], "none", activation_checkpointing=True)
    assert isinstance(net, FSDPModule) and sum(isinstance(m, FSDPModule) for m in net.modules()) == 3
    assert type(net.blocks[0]).__name__.endswith("CheckpointWrapper")  # FSDP2 subclasses the wrapper in place
    shard_model(net, init_device_mesh("cpu", (1,)), ["Block"], "none", True)  # again (test's configure_model): a no-op
    assert sum(isinstance(m, FSDPModule) for m in net.modules()) == 3
    state = get_model_state_dict(net)
    assert state.keys() == plain.state_dict().keys()  # what export writes loads into the plain model
    x = torch.randn(5, 3)
    net.eval(), plain.eval()
    assert torch.allclose(net(x), plain(x))
    net.train()
    net(x).sum().backward()  # the recomputed blocks give gradients
    assert all(p.grad is not None for p in net.parameters())
    # mixed precision (GPU runs; the policy is the same on a CPU mesh): bf16 compute, float32 master weights
    half = Net()
    shard_model(half, init_device_mesh("cpu", (1,)), [], "bf16", activation_checkpointing=False)
    assert half(x).dtype == torch.bfloat16 and all(p.dtype == torch.float32 for p in half.parameters())


@pytest.fixture
def four_rank_cfg(tmp_path: Path) -> config.JobConfig:
    job = tmp_path / "job.toml"
    job.write_text('[job]\nname = "r"\n[model]\nclass_path = "mlp"\n[data]\nclass_path = "digits"\n')
    return config.resolve(config.Request(job_file=str(job), cluster_file=str(REPO / "cluster.toml"), procs=4, gpus=0))


def test_resume_on_another_world_size_needs_sizes_that_divide(four_rank_cfg) -> None:
    assert reshape(four_rank_cfg, {"procs_per_node": 2}).world_size == 2
    assert reshape(four_rank_cfg, {"nodes": 2}).world_size == 8
    with pytest.raises(LaunchError, match="the run trained on 4, and one world size must divide the other"):
        reshape(four_rank_cfg, {"procs_per_node": 3})
    with pytest.raises(LaunchError, match="this run trains on CPU processes; use --procs"):
        reshape(four_rank_cfg, {"gpus_per_node": 2})
    with pytest.raises(LaunchError, match="must be at least 1"):
        reshape(four_rank_cfg, {"nodes": 0})


def test_a_sharded_checkpoint_counts_only_with_its_marker_and_its_previous_copy_is_found(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    run.checkpoints.mkdir(parents=True)
    partial = run.checkpoints / "resume.ckpt"
    partial.mkdir()
    (partial / "__0_0.distcp").write_bytes(b"x")
    assert not checkpoint_complete(partial) and run.full_state_checkpoints() == []
    # the instant between the two renames of a replacement: only the previous copy is there
    partial.rename(run.checkpoints / ".preempt.ckpt.prev")
    previous = run.checkpoints / ".preempt.ckpt.prev"
    assert run.full_state_checkpoints() == []  # not complete
    (previous / "complete.json").write_text("{}")
    assert run.full_state_checkpoints() == [previous]
    run.preempt_checkpoint.write_bytes(b"a whole file")  # a file is whole (written atomically)
    assert run.full_state_checkpoints() == [run.preempt_checkpoint]


def test_a_background_copy_is_its_own_and_a_failed_write_is_raised() -> None:
    live = {"w": torch.ones(3), "nested": [{"m": torch.zeros(2)}], "step": 4}
    copy = cpu_copy(live)
    live["w"].add_(1)
    live["nested"][0]["m"].add_(1)
    assert copy["w"].tolist() == [1, 1, 1] and copy["nested"][0]["m"].tolist() == [0, 0] and copy["step"] == 4
    writer, release = BackgroundWriter(), threading.Event()
    writer.start(release.wait)
    assert writer.busy
    release.set()
    writer.wait()
    assert not writer.busy

    def fail() -> None:
        raise OSError(28, "No space left on device")

    writer.start(fail)
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    writer.wait()  # raised once


def test_a_background_sharded_save_writes_the_callbacks_state_of_its_own_step(one_rank, tmp_path: Path,
                                                                               monkeypatch) -> None:
    """The write finishes after training went on; an epoch end in between (ModelCheckpoint adding a
    best model to its live dict) must not reach the checkpoint: it would no longer load."""
    from types import SimpleNamespace

    from launcher.runtime import fsdp

    published, release = threading.Event(), threading.Event()
    real_publish = fsdp._publish

    def held_publish(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        release.wait(30)
        real_publish(*args, **kwargs)
        published.set()

    monkeypatch.setattr(fsdp, "_publish", held_publish)
    best = {"epoch=0.ckpt": torch.tensor(0.5)}
    checkpoint = {"state_dict": {"w": torch.ones(2)}, "optimizer_states": [], "global_step": 45,
                  "callbacks": {"ModelCheckpoint": {"best_k_models": best, "kth_best_model_path": ""}}}
    strategy = SimpleNamespace(background=BackgroundWriter(), broadcast=lambda value: value, _checkpoint_group=None)
    fsdp.LaunchFSDPStrategy.save_checkpoint_in_background(strategy, checkpoint, tmp_path / "resume.ckpt")
    best["epoch=1.ckpt"] = torch.tensor(0.7)  # the epoch end, while the write is under way
    release.set()
    strategy.background.wait()
    assert published.is_set()
    meta = torch.load(tmp_path / "resume.ckpt" / fsdp.META, weights_only=False)
    assert list(meta["callbacks"]["ModelCheckpoint"]["best_k_models"]) == ["epoch=0.ckpt"]
