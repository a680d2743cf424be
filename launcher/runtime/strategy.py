"""DDP with exact evaluation and launch's resumable training sampler."""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.trainer.states import RunningStage
from torch.utils.data import DataLoader, DistributedSampler

from launcher.runtime.lightning_compat import with_sampler
from launcher.runtime.samplers import ResumableDistributedSampler

_EVAL_STAGES = (RunningStage.VALIDATING, RunningStage.TESTING, RunningStage.SANITY_CHECKING)


class LaunchDDPStrategy(DDPStrategy):
    """DDP with evaluation metrics that equal the single-process value exactly.

    Two things in stock Lightning make distributed evaluation inexact:
    - the evaluation DistributedSampler pads the last round by repeating samples, so those are
      counted twice when the dataset size is not divisible by the world size;
    - a `sync_dist` epoch mean divides an int64 batch-size sum by the world size in place,
      which floors it (3 and 2 samples per rank: 5 / 2 -> 2, and a constant 1.0 logs as 1.25).
    """

    strategy_name = "launch_ddp"

    def process_dataloader(self, dataloader: object) -> object:
        trainer = self.lightning_module.trainer
        stage = trainer.state.stage
        # Only the DistributedSampler Lightning itself added is replaced; a user's own is kept.
        if isinstance(dataloader, DataLoader) and type(dataloader.sampler) is DistributedSampler:
            old = dataloader.sampler
            if stage in _EVAL_STAGES:
                sampler = UnrepeatedDistributedSampler(old.dataset, num_replicas=old.num_replicas, rank=old.rank,
                                                       shuffle=False)
                dataloader = with_sampler(dataloader, sampler, stage)
            elif stage == RunningStage.TRAINING:
                sampler = ResumableDistributedSampler(old.dataset, num_replicas=old.num_replicas, rank=old.rank,
                                                      shuffle=old.shuffle, seed=old.seed, drop_last=old.drop_last)
                dataloader = with_sampler(dataloader, sampler, stage)
                dataloader.generator = sampler.loader_generator = torch.Generator()
        return super().process_dataloader(dataloader)

    def reduce(self, tensor: Any, group: Any = None, reduce_op: Any = "mean") -> Any:
        if (
            isinstance(tensor, torch.Tensor)
            and not torch.is_floating_point(tensor)
            and isinstance(reduce_op, str)
            and reduce_op.lower() in ("mean", "avg")
        ):
            tensor = tensor.double()
        return super().reduce(tensor, group=group, reduce_op=reduce_op)
