"""Iterable datasets without a state launch can keep (plain streams), continued exactly by replay.

A stream keeps no position a checkpoint could hold. It is continued instead by replaying it: on a
resume, each rank iterates its stream for the epoch again, drops the batches already trained and
trains on. That is exact when an epoch of the stream is a function of the epoch, the rank and the
DataLoader worker (and of the random generators launch seeds), which this module arranges:

- before each epoch's iterator the dataset's own `set_epoch(epoch)` is called, if it has one
  (Lightning calls set_epoch on samplers only, never on an iterable dataset);
- each epoch of each rank's (and each worker's) stream runs under its own seed, drawn from (job
  seed, epoch, rank, worker): a worker's generators are the pipeline's alone and are reseeded when
  its stream starts; in the main process (num_workers = 0) the generators are also the model's,
  so the stream draws from generators of its own, swapped in for each batch, and the model's
  dropout draws the same whether batches were replayed or not;
- on a resume part-way through an epoch, the first iterator of that epoch drops the batches
  already trained.

Replay costs the time to produce the dropped batches again (in the workers, in parallel). A
stream that counts its own epochs, reads the clock or draws from an unseeded generator is not
replayed exactly; `launch verify` names it. Persistent workers keep their copy of the stream from
one epoch to the next, out of reach of set_epoch and of the epoch's seed: refused.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, get_worker_info

from launcher.runtime.samplers import (
    UnresumableData,
    become,
    methods_subclass,
    rng_states,
    sample_seed,
    seed_all,
    set_rng_states,
)

_EPOCH = "_launch_stream_epoch"  # in the dataset's __dict__: the StreamEpoch it streams next
_REPLAY = "_launch_replay"  # in the loader's __dict__: its Replay


@dataclass(frozen=True)
class StreamEpoch:
    """What one epoch of one rank's stream is a function of (travels to the workers with the dataset)."""

    seed: int  # the job's
    seeded: bool  # false leaves the stream's generators alone (job.seed_per_sample = false)
    epoch: int
    rank: int
    batch: int  # items a batch: the main process draws a batch at a time under the stream's generators

    def seed_of(self, worker: int | None) -> int:
        """The seed of a worker's stream (None: the main process's), or with worker -1 the seed of the
        loader's generator, which draws the workers' base seed."""
        return sample_seed(self.seed, self.epoch, 2**40 + self.rank * 2**16 + (worker + 2 if worker is not None else 0))


@dataclass
class Replay:
    """A training loader's stream plan: the epoch of each iterator it creates, and the batches its
    first iterator of the resumed epoch drops."""

    first_epoch: int  # of the first iterator (the loader may be built before Lightning restores its loops)
    current_epoch: Callable[[], int]  # of every later one: the Trainer's
    resume: tuple[int, int] | None  # (epoch, batches of it already trained)
    seed: int
    seeded: bool
    rank: int
    say: Callable[[str], None]  # rank zero's console; the others' is silent
    started: bool = False

    def next_epoch(self) -> int:
        if self.started:
            return self.current_epoch()
        self.started = True
        return self.first_epoch

    def batches_to_drop(self, epoch: int) -> int:
        if self.resume is None or self.resume[0] != epoch:
            return 0
        batches, self.resume = self.resume[1], None
        return batches


def replays(loader: Any) -> bool:
    """Whether `loader` continues its stream by replay."""
    return _REPLAY in getattr(loader, "__dict__", {})


def continue_by_replay(loader: DataLoader, replay: Replay) -> None:
    """Make `loader` (a DataLoader over an iterable dataset) stream each epoch as a function of the
    epoch, rank and worker, and replay to the resume position. Raises UnresumableData where replay
    could not be exact."""
    dataset = loader.dataset
    name = type(dataset).__name__
    if loader.num_workers and loader.persistent_workers:
        raise UnresumableData(
            f"the training data is an IterableDataset ({name}) without a state launch can keep, read by persistent "
            "workers: each keeps its copy of the stream from epoch to epoch, where launch cannot tell it the epoch to "
            "replay; set persistent_workers = False, or give the dataset state_dict()/load_state_dict() and use "
            "torchdata's StatefulDataLoader, or set job.preemptible = false")
    if not _extend(dataset, "_launch_streams", _stream_methods) or not _extend(loader, "_launch_replays", _loader_methods):
        raise UnresumableData(f"the training data ({name}, in a {type(loader).__name__}) is of a class launch cannot "
                              "extend in place (it needs an instance __dict__) to replay it; set job.preemptible = false")
    loader.__dict__[_REPLAY] = replay


def _extend(obj: Any, flag: str, methods: Callable[[type], dict[str, Any]]) -> bool:
    cls = type(obj)
    if getattr(cls, flag, False):
        return True
    return become(obj, methods_subclass(cls, {**methods(cls), flag: True}))


def _stream_methods(user_class: type) -> dict[str, Any]:
    iterate = user_class.__iter__

    def __iter__(self: Any) -> Iterator[Any]:
        plan = self.__dict__.get(_EPOCH)
        if plan is None or not plan.seeded:
            return iterate(self)
        worker = get_worker_info()
        if worker is not None:  # a worker's generators are its stream's alone
            seed_all(plan.seed_of(worker.id))
            return iterate(self)
        return _under_own_generators(lambda: iterate(self), plan.seed_of(None), plan.batch)

    def __reduce_ex__(self: Any, protocol: Any) -> tuple[Any, ...]:
        # Pickled (to spawned workers) as the user's own class, and extended again on arrival.
        plain = object.__new__(user_class)
        plain.__dict__.update(self.__dict__)
        return _streams_again, (plain,)

    return {"__iter__": __iter__, "__reduce_ex__": __reduce_ex__}


def _streams_again(dataset: Any) -> Any:
    _extend(dataset, "_launch_streams", _stream_methods)
    return dataset


def _under_own_generators(start: Callable[[], Iterator[Any]], seed: int, batch: int) -> Iterator[Any]:
    """The stream's items, each batch drawn under the stream's own generator states (seeded by
    `seed` at its start), with the process's put back in between: once a batch, not once an item."""
    items: Iterator[Any] | None = None
    own: tuple[Any, ...] = ()
    while True:
        outside = rng_states()
        try:
            if items is None:
                seed_all(seed)
                items = iter(start())
            else:
                set_rng_states(own)
            chunk = list(itertools.islice(items, batch))
            own = rng_states()
        finally:
            set_rng_states(outside)
        yield from chunk
        if len(chunk) < batch:
            return


def _loader_methods(loader_class: type) -> dict[str, Any]:
    iterate = loader_class.__iter__

    def __iter__(self: Any) -> Iterator[Any]:
        replay: Replay | None = self.__dict__.get(_REPLAY)
        if replay is None:
            return iterate(self)
        epoch = replay.next_epoch()
        dataset = self.dataset
        if callable(getattr(dataset, "set_epoch", None)):
            dataset.set_epoch(epoch)
        # Read by the stream's __iter__: in this process, or in the workers this iterator starts.
        plan = dataset.__dict__[_EPOCH] = StreamEpoch(replay.seed, replay.seeded, epoch, replay.rank,
                                                      self.batch_size or 1)
        if self.generator is not None:  # it draws the workers' base seed when the iterator starts
            self.generator.manual_seed(plan.seed_of(-1))
        iterator = iterate(self)
        drop = replay.batches_to_drop(epoch)
        if drop:
            _drop(iterator, drop, epoch, type(dataset).__name__, self.batch_size or 1, replay.say)
        return iterator

    return {"__iter__": __iter__}


def _drop(iterator: Iterator[Any], batches: int, epoch: int, name: str, batch: int, say: Callable[[str], None]) -> None:
    say(f"[launch] replaying the training stream ({name}) to where epoch {epoch} stopped: fetching and dropping "
        f"{batches} batch(es), {batches * batch:,} items, on each rank")
    start = last = time.monotonic()
    for n in range(1, batches + 1):
        if next(iterator, _END) is _END:
            raise UnresumableData(
                f"the training stream ({name}) ended after {n - 1} batch(es) of epoch {epoch} on replay, where the "
                f"interrupted attempt had trained {batches}: it does not stream the same each time (it must be a "
                "function of its epoch, rank and worker); run `launch verify` on the job")
        now = time.monotonic()
        if now - last >= 10:
            say(f"[launch] replaying: {n:,} of {batches:,} batches ({n / (now - start):.1f} a second)")
            last = now
    say(f"[launch] replayed {batches} batch(es) in {time.monotonic() - start:.1f} s")


_END = object()
