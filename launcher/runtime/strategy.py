"""DDP with exact evaluation, a reduction order that survives a resume, and launch's resumable
training data."""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, IterableDataset

from launcher.runtime import ddp_compat, signals
from launcher.runtime import lightning_compat as compat
from launcher.runtime.checkpoint_io import BackgroundWriter, cpu_copy
from launcher.runtime.lightning_api import DDPStrategy, RunningStage, UnrepeatedDistributedSampler
from launcher.runtime.samplers import (
    ResumableDistributedSampler,
    UnresumableData,
    seed_each_sample,
)
from launcher.runtime.stateful_data import record_batch_states
from launcher.runtime.streams import Replay, continue_by_replay

_EVAL_STAGES = (RunningStage.VALIDATING, RunningStage.TESTING, RunningStage.SANITY_CHECKING)
_LOADER_SEEDS = {stage: 1_000_003 * (i + 1) for i, stage in enumerate(RunningStage)}

def stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def _console(line: str) -> None:
    print(line, flush=True)


def _silent(line: str) -> None:
    pass


def _unrecordable(what: str) -> UnresumableData:
    return UnresumableData(f"{what} launch cannot extend in place (it needs an instance __dict__) to keep its state "
                           "at each batch; set job.preemptible = false")


class ExactData:
    """A strategy's side of exact training data (mixed into launch's DDP and FSDP strategies).

    Exact evaluation (stock Lightning is inexact in two ways): the evaluation DistributedSampler
    pads the last round by repeating samples, so those are counted twice when the dataset size is
    not divisible by the world size; and a `sync_dist` epoch mean divides an int64 batch-size sum
    by the world size in place, which floors it (3 and 2 samples per rank: 5 / 2 -> 2).

    Exact resume: the training sampler knows its epoch and resume position before Lightning
    creates the iterator, and each sample's augmentation is drawn from its own seed (samplers.py).
    """

    global_rank: int
    lightning_module: Any

    def init_exact_data(self, seed_samples: bool, preemptible: bool) -> None:
        self.seed_samples, self.preemptible = seed_samples, preemptible
        # Set by the preemption handler when a checkpoint is restored, before the loaders exist.
        self.resume_position: tuple[int, int] | None = None  # (epoch, batches of it already trained)
        self.resume_dataset_state: Any = None  # an iterable dataset's own state, this rank's
        # The epoch a restored checkpoint puts the Trainer at. The training loader may be built
        # before Lightning restores its loops (configure_optimizers asking for
        # estimated_stepping_batches), when trainer.current_epoch still says 0.
        self.restored_epoch: int | None = None
        # The global batch (samples per optimizer step over all ranks) of a checkpoint written on
        # another world size: each rank's batch is scaled to keep it (launch resume --procs/--nodes).
        self.global_batch: int | None = None

    def process_dataloader(self, dataloader: object) -> object:
        trainer = self.lightning_module.trainer
        stage = trainer.state.stage
        if stage == RunningStage.TRAINING and isinstance(dataloader, DataLoader) \
                and isinstance(dataloader.dataset, IterableDataset):
            self._prepare_iterable(dataloader)
        # Only the DistributedSampler Lightning itself added is replaced; a user's own is kept.
        elif isinstance(dataloader, DataLoader) and type(dataloader.sampler) is DistributedSampler:
            old = dataloader.sampler
            if stage in _EVAL_STAGES:
                sampler = UnrepeatedDistributedSampler(old.dataset, num_replicas=old.num_replicas, rank=old.rank,
                                                       shuffle=False)
                dataloader = compat.with_sampler(dataloader, sampler, stage)
            elif stage == RunningStage.TRAINING:
                epoch = trainer.current_epoch if self.restored_epoch is None else self.restored_epoch
                self.restored_epoch = None  # later loaders (reload_dataloaders_every_n_epochs) follow the loop
                dataloader = self._training_loader(dataloader, old, epoch)
        if isinstance(dataloader, DataLoader) and dataloader.num_workers > 0 \
                and not isinstance(dataloader.worker_init_fn, signals.IgnoredInWorkers):
            dataloader.worker_init_fn = signals.IgnoredInWorkers(dataloader.worker_init_fn)
        if isinstance(dataloader, DataLoader) and dataloader.generator is None:
            # Every iterator a loader creates draws its workers' base seed, from the global RNG
            # unless the loader has a generator. An attempt creates a persistent-worker loader's
            # iterator once, so a resumed attempt would draw once more than an uninterrupted run
            # and shift the RNG the model's dropout uses: every loader draws from its own.
            dataloader.generator = torch.Generator().manual_seed(_LOADER_SEEDS[stage] + self.global_rank)
        return super().process_dataloader(dataloader)  # type: ignore[misc]

    def _training_loader(self, dataloader: DataLoader, old: DistributedSampler, epoch: int) -> DataLoader:
        seeded = self.seed_samples and seed_each_sample(old.dataset)
        sampler = ResumableDistributedSampler(old.dataset, num_replicas=old.num_replicas, rank=old.rank,
                                              shuffle=old.shuffle, seed=old.seed, drop_last=old.drop_last,
                                              seed_samples=seeded)
        dataloader = compat.with_sampler(dataloader, sampler, RunningStage.TRAINING)
        dataloader.generator = sampler.loader_generator = torch.Generator()
        batch_size = self._keep_global_batch(dataloader, old.num_replicas)
        # Lightning creates this loader's iterator before the epoch loop sets the epoch, and a
        # loader with workers draws the indices right then: the sampler must be ready now.
        sampler.set_epoch(epoch)
        if self.resume_position is not None and self.resume_position[0] == epoch and not stateful(dataloader):
            if dataloader.batch_size is None:
                raise UnresumableData("resuming mid-epoch needs the training DataLoader's batch_size (a custom "
                                      "batch_sampler cannot be positioned); set job.preemptible = false to run it")
            sampler.resume_at(epoch, self.resume_position[1] * batch_size)
        return dataloader

    def _keep_global_batch(self, dataloader: DataLoader, ranks: int) -> int:
        """Each rank's batch size: the loader's, or on another world size than the checkpoint's, the
        one that keeps the global batch. A rank's share of the global order (DistributedSampler:
        sample i goes to rank i mod ranks) then makes every optimizer step train the same samples
        as on the original world size."""
        batch = dataloader.batch_size or 0
        if self.global_batch is None or not batch or self.global_batch == batch * ranks:
            return batch
        if self.global_batch % ranks or type(dataloader.batch_sampler) is not BatchSampler:
            raise UnresumableData(
                f"the checkpoint's global batch ({self.global_batch} samples a step) cannot be kept on {ranks} ranks "
                + ("(not a multiple)" if self.global_batch % ranks else "with a custom batch sampler")
                + ": resume on a world size that divides it, or on the run's own")
        scaled = self.global_batch // ranks
        dataloader.batch_sampler.batch_size = scaled  # the loader draws its batches from it
        if self.global_rank == 0:
            print(f"[launch] world size {ranks}: each rank's batch {batch} -> {scaled} keeps the global batch of "
                  f"{self.global_batch} samples a step", flush=True)
        return scaled

    def _prepare_iterable(self, dataloader: DataLoader) -> None:
        """An iterable dataset resumes through its own state where launch can keep it: the loader's
        (torchdata's StatefulDataLoader, any workers) or the dataset's (in the main process,
        num_workers = 0). Any other stream is continued by replay (streams.py)."""
        dataset = dataloader.dataset
        first = self.resume_position[1] if self.resume_position else 0
        if stateful(dataloader):
            # Lightning restores its state (each rank's own: the preemption handler hands it over);
            # launch keeps its state at each batch, as Lightning fetches one ahead of an unsized loader.
            if record_batch_states(dataloader, 1, first) or not self.preemptible:
                return
            raise _unrecordable(f"the training loader ({type(dataloader).__name__}) is of a class")
        if stateful(dataset) and dataloader.num_workers == 0:
            if self.resume_dataset_state is not None:
                dataset.load_state_dict(self.resume_dataset_state)
                self.resume_dataset_state = None
            else:
                first = 0
            if record_batch_states(dataset, dataloader.batch_size or 1, first) or not self.preemptible:
                return
            raise _unrecordable(f"the training data is an IterableDataset ({type(dataset).__name__}) whose class is one")
        trainer = self.lightning_module.trainer
        epoch = trainer.current_epoch if self.restored_epoch is None else self.restored_epoch
        self.restored_epoch = None
        replay = Replay(first_epoch=epoch, current_epoch=lambda: trainer.current_epoch, resume=self.resume_position,
                        seed=int(os.environ.get("PL_GLOBAL_SEED", "0")), seeded=self.seed_samples,
                        rank=self.global_rank, say=_console if self.global_rank == 0 else _silent)
        try:
            continue_by_replay(dataloader, replay)
        except UnresumableData:
            if self.preemptible:
                raise

    def reduce(self, tensor: Any, group: Any = None, reduce_op: Any = "mean") -> Any:
        if (
            isinstance(tensor, torch.Tensor)
            and not torch.is_floating_point(tensor)
            and isinstance(reduce_op, str)
            and reduce_op.lower() in ("mean", "avg")
        ):
            tensor = tensor.double()
        return super().reduce(tensor, group=group, reduce_op=reduce_op)  # type: ignore[misc]


class UnusedParameters(RuntimeError):
    """Some parameters got no gradient in a step, which DDP without `find_unused_parameters` refuses."""


class LaunchDDPStrategy(ExactData, DDPStrategy):
    """DDP whose results do not depend on where an attempt started: exact data (ExactData), and
    gradient buckets that never change layout: laid out once before the first step
    (ddp_compat.fix_bucket_layout), or, with `find_unused_parameters` (DDP then never rebuilds),
    as DDP first lays them out."""

    strategy_name = "launch_ddp"

    def __init__(self, *, seed_samples: bool = True, preemptible: bool = True, fixed_buckets: bool = True,
                 find_unused_parameters: bool = False, **kwargs: Any) -> None:
        self.fix_layout = fixed_buckets and not find_unused_parameters and ddp_compat.available()
        self.finds_unused = find_unused_parameters or (fixed_buckets and not self.fix_layout)
        super().__init__(find_unused_parameters=self.finds_unused, **kwargs)
        self.init_exact_data(seed_samples, preemptible)
        self.background = BackgroundWriter()

    def configure_ddp(self) -> None:
        super().configure_ddp()
        if self.fix_layout and not ddp_compat.fix_bucket_layout(self.model) and self.is_global_zero:
            print("launch: warning: DDP's gradient buckets could not be laid out once (sparse gradients?): a resumed "
                  "run may differ from an uninterrupted one in the last bits; job.find_unused_parameters = true "
                  "keeps them fixed", flush=True)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().training_step(*args, **kwargs)
        except RuntimeError as exc:  # DDP's words, which name a DDP argument launch's users do not pass
            if self.finds_unused or "find_unused_parameters=True" not in str(exc):
                raise
            raise UnusedParameters("some parameters of the model got no gradient in the last step (DDP cannot "
                                   "reduce them): set job.find_unused_parameters = true") from exc

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        self.background.wait()  # one write at a time, in order
        super().save_checkpoint(checkpoint, filepath, storage_options)

    def save_checkpoint_in_background(self, checkpoint: dict[str, Any], filepath: Any) -> None:
        """Rank zero copies the state (off the training path: the copy, not the live tensors, is
        written) and writes it in a thread while training goes on; the next save waits for it."""
        self.background.wait()
        if self.is_global_zero:
            copy = cpu_copy(checkpoint)
            self.background.start(lambda: self.checkpoint_io.save_checkpoint(copy, filepath))

    def teardown(self) -> None:
        self.background.wait()
        super().teardown()


class EvaluationStepSync(ValueError):
    """A per-step collective in evaluation, where ranks may run different numbers of batches."""


def guard_evaluation_logging(module: Any) -> None:
    """Refuse `self.log(..., sync_dist=True, on_step=True)` in validation and test, at the first call.

    Launch evaluates every sample exactly once, so with an uneven split one rank runs a batch
    more than another; a per-step all-reduce there waits forever for the rank that has no such
    batch (gloo then dies natively, with the reason only in a rank log).
    """
    log = module.log

    def checked_log(name: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            trainer = module.trainer
        except RuntimeError:  # not attached to a Trainer (yet)
            trainer = None
        if trainer is not None and kwargs.get("sync_dist") and kwargs.get("on_step") \
                and trainer.state.stage in _EVAL_STAGES:
            where = {"sanity_check": "validation (sanity check)", "validate": "validation"}.get(
                trainer.state.stage.value, trainer.state.stage.value)
            raise EvaluationStepSync(
                f"self.log({name!r}, ..., sync_dist=True, on_step=True) in {where}: launch evaluates "
                "every sample exactly once, so ranks may run different numbers of batches and a per-step all-reduce "
                "would hang; log evaluation metrics per epoch (on_step=False)")
        return log(name, value, *args, **kwargs)

    module.log = checked_log
