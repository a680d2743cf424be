"""FSDP: FSDP2's `fully_shard` through Lightning's ModelParallelStrategy, with launch's exact data,
sharded checkpoints that count only when complete, and background (asynchronous) saves.

A checkpoint is a directory: torch's distributed checkpoint (DCP: `.metadata` and one
`__R_0.distcp` a rank, written by every rank in parallel), `meta.pt` (everything that is not a
model or optimizer tensor: loops, schedulers, callbacks, launch's per-rank RNG and data state) and
`complete.json`, written last. It is written as `.NAME.partial/` and renamed into place only when
complete; until then the previous checkpoint of that name stays (as `.NAME.prev/` for the instant
between the two renames, which resume also looks at). Loading reshards: DCP reads any shard layout
into any other, so a run resumes on another number of ranks.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from launcher.rundir import CHECKPOINT_MARKER, SHARDED_META, atomic_open, atomic_write_text, fsync_dir
from launcher.runtime import lightning_compat as compat
from launcher.runtime.checkpoint_io import BackgroundWriter, cpu_copy
from launcher.runtime.lightning_api import ModelParallelStrategy, is_overridden
from launcher.runtime.strategy import ExactData

META = SHARDED_META
_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class ShardingError(ValueError):
    """strategy.shard_modules names a class the model does not have."""


def shard_units(model: nn.Module, class_names: list[str]) -> list[nn.Module]:
    """The modules that become their own shard units (the root is one as well): those of the named
    classes, or by default each direct child that holds parameters."""
    if not class_names:
        return [child for child in model.children() if any(True for _ in child.parameters())]
    units = [m for m in model.modules() if m is not model and type(m).__name__ in class_names]
    found = {type(m).__name__ for m in units}
    missing = [name for name in class_names if name not in found]
    if missing:
        have = sorted({type(m).__name__ for m in model.modules() if m is not model})
        raise ShardingError(f"strategy.shard_modules: the model has no module of class {', '.join(missing)} "
                            f"(its classes: {', '.join(have)})")
    return units


def shard_model(model: nn.Module, mesh: Any, class_names: list[str], mixed_precision: str,
                activation_checkpointing: bool) -> None:
    """fully_shard the units, then the root (once: configure_model runs again for test)."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if any(isinstance(m, FSDPModule) for m in model.modules()):
        return
    units = shard_units(model, class_names)
    if activation_checkpointing:
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

        chosen = {id(u) for u in units}
        apply_activation_checkpointing(model, check_fn=lambda m: id(m) in chosen)
        units = [m for m in model.modules() if id(getattr(m, "_checkpoint_wrapped_module", None)) in chosen]
    dtype = _DTYPES[mixed_precision]
    kwargs: dict[str, Any] = {"mesh": mesh}
    if dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for unit in units:
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)


def install_sharding(model: Any, settings: Any) -> bool:
    """Give the model a configure_model that shards it as the job file says, unless it shards
    itself (overrides configure_model). True if launch's sharding was installed."""
    if is_overridden("configure_model", model):
        return False

    def configure_model() -> None:
        shard_model(model, model.device_mesh["data_parallel"], list(settings.shard_modules), settings.mixed_precision,
                    settings.activation_checkpointing)

    model.configure_model = configure_model
    return True


class LaunchFSDPStrategy(ExactData, ModelParallelStrategy):
    """FSDP over every rank (data parallel size = world size), with launch's exact data, atomic
    sharded checkpoints and background saves (see the module docstring)."""

    strategy_name = "launch_fsdp"

    def __init__(self, *, world_size: int, seed_samples: bool = True, preemptible: bool = True,
                 cluster_environment: Any = None, **kwargs: Any) -> None:
        super().__init__(data_parallel_size=world_size, tensor_parallel_size=1, save_distributed_checkpoint=True,
                         **kwargs)
        self.cluster_environment = cluster_environment
        self.init_exact_data(seed_samples, preemptible)
        self.background = BackgroundWriter()
        self._checkpoint_group: Any = None  # a gloo group of its own for background saves' collectives
        self._optimizer_source: Path | None = None

    # Restored before setup, as DDP is: the preemption handler hands the resume position to the
    # loaders before configure_optimizers may build one. The model is sharded by then
    # (configure_model); the optimizers, created in setup, read their shards in load_optimizer_state_dict.
    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return False

    @property
    def lightning_restore_optimizer(self) -> bool:
        return True

    def setup_environment(self) -> None:
        super().setup_environment()
        if dist.is_initialized():
            self._checkpoint_group = dist.new_group(backend="gloo")

    # -- saving
    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        self.background.wait()
        path = Path(self.broadcast(str(filepath)))
        save_sharded(split_checkpoint(checkpoint), checkpoint, path)

    def save_checkpoint_in_background(self, checkpoint: dict[str, Any], filepath: Any) -> None:
        """DCP copies every rank's shards to CPU memory now (off the training path), then writes them
        in a thread; rank zero publishes the checkpoint when all shards are on disk."""
        self.background.wait()
        path = Path(self.broadcast(str(filepath)))
        shards = split_checkpoint(checkpoint)
        # meta.pt is written later, by the thread: copy it now. Callbacks' states hold their live
        # containers (ModelCheckpoint's best_k_models dict): an epoch end during the write would
        # change them under it and save a state that cannot be loaded (a best_k_models entry more
        # than its kth_best_model_path says: KeyError '' at the next epoch end after the resume).
        save_sharded_in_background(shards, cpu_copy(checkpoint), path, self._checkpoint_group, self.background)

    def teardown(self) -> None:
        self.background.wait()
        super().teardown()

    # -- loading
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(str(checkpoint_path)))
        if not path.is_dir():
            raise RuntimeError(f"{path} is not a sharded checkpoint (a directory with {CHECKPOINT_MARKER}): "
                               "an FSDP run resumes from the sharded checkpoints it writes")
        model_state = get_model_state_dict(self.model)
        dcp.load({"state_dict": model_state}, checkpoint_id=path)
        set_model_state_dict(self.model, model_state)
        meta = torch.load(path / META, map_location="cpu", weights_only=bool(weights_only))
        meta["optimizer_states"] = []  # in the shards: load_optimizer_state_dict reads them
        self._optimizer_source = path
        return meta

    def load_model_state_dict(self, checkpoint: Any, strict: bool = True) -> None:
        pass  # loaded into the shards by load_checkpoint

    def load_optimizer_state_dict(self, checkpoint: Any) -> None:
        assert self._optimizer_source is not None
        for i, optimizer in enumerate(self.optimizers):
            optimizer = compat.unwrapped_optimizer(optimizer)
            state = get_optimizer_state_dict(self.model, optimizer)
            dcp.load({f"optimizer_{i}": state}, checkpoint_id=self._optimizer_source)
            set_optimizer_state_dict(self.model, optimizer, state)


def split_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Take the sharded part (the model's and optimizers' states) out of a Lightning checkpoint;
    what is left is meta.pt."""
    state = {"state_dict": checkpoint.pop("state_dict")}
    state.update({f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))})
    return state


def _begin(path: Path) -> Path:
    """Every rank: the partial directory, emptied of an earlier attempt's unfinished write."""
    partial = path.parent / f".{path.name}.partial"
    if dist.get_rank() == 0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    return partial


def save_sharded(state: dict[str, Any], meta: dict[str, Any], path: Path) -> None:
    """Every rank writes its shards of `state` in parallel; rank zero then publishes the checkpoint."""
    partial = _begin(path)
    dcp.save(state, checkpoint_id=partial)
    if dist.get_rank() == 0:
        _publish(partial, path, meta)
    dist.barrier()


def save_sharded_in_background(state: dict[str, Any], meta: dict[str, Any], path: Path, group: Any,
                               writer: BackgroundWriter) -> None:
    """DCP copies this rank's shards to CPU memory now (the training path's only cost), then a thread
    writes them, its collectives on `group` (a gloo group of their own: never the training's); rank
    zero publishes the checkpoint when every rank's shards and the metadata are on disk."""
    partial = _begin(path)
    future = dcp.async_save(state, checkpoint_id=partial, process_group=group)
    rank_zero = dist.get_rank() == 0

    def finish() -> None:
        future.result()  # rank zero's returns once every rank's shards and the metadata are written
        if rank_zero:
            _publish(partial, path, meta)

    writer.start(finish)


def _publish(partial: Path, path: Path, meta: dict[str, Any]) -> None:
    """Rank zero, once every shard is written: meta.pt, the marker, then the rename into place."""
    with atomic_open(partial / META) as fh:
        torch.save(meta, fh)
    atomic_write_text(partial / CHECKPOINT_MARKER, json.dumps(
        {"global_step": meta.get("global_step"), "epoch": meta.get("epoch"), "t": round(time.time(), 3),
         "world_size": dist.get_world_size() if dist.is_initialized() else 1}) + "\n")
    previous = path.parent / f".{path.name}.prev"
    shutil.rmtree(previous, ignore_errors=True)
    if path.exists():
        os.rename(path, previous)
    os.rename(partial, path)
    fsync_dir(path.parent)
    shutil.rmtree(previous, ignore_errors=True)


def read_sharded_model(path: Path) -> dict[str, torch.Tensor]:
    """The model's full state dict (plain keys) from a sharded checkpoint, without a process group
    and without reading the optimizer's shards."""
    metadata = dcp.FileSystemReader(str(path)).read_metadata()
    prefix = "state_dict."
    tensors = {key[len(prefix):]: torch.empty(meta.size, dtype=meta.properties.dtype)
               for key, meta in metadata.state_dict_metadata.items()
               if key.startswith(prefix) and isinstance(meta, dcp.TensorStorageMetadata)}
    state = {"state_dict": tensors}
    with warnings.catch_warnings():  # "torch.distributed is ... uninitialized": as meant
        warnings.filterwarnings("ignore", message=r".*torch\.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path), no_dist=True)
    return state["state_dict"]


def consolidate(path: Path) -> dict[str, Any]:
    """A sharded checkpoint as one Lightning checkpoint dict (meta.pt's entries, the full model
    state; no optimizer state): what one device loads to test, predict or export."""
    meta = torch.load(path / META, map_location="cpu", weights_only=False)
    meta["state_dict"] = read_sharded_model(path)
    return meta
