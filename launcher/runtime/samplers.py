"""The training sampler, and random augmentation that is a pure function of where a sample is.

Two things make a resumed epoch differ from an uninterrupted one, and both are fixed here:

- Lightning creates the training iterator before any callback runs (FitLoop.setup_data), and a
  DataLoader with workers draws the epoch's indices at that moment. So the sampler must know the
  epoch and the resume position when the loader is built, not later.
- Random augmentation runs in the workers, each on its own RNG stream; which worker gets which
  batch, and how far its stream has advanced, depend on where the attempt started. Here every
  sample is fetched under its own seed, derived from (job seed, epoch, sample index): what a
  sample's augmentation draws is then the same in every attempt, whichever worker computes it.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, get_worker_info

_MASK = 2**64 - 1


class UnresumableData(Exception):
    """The training data cannot be put back where a preempted run stopped."""


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch (splitmix64 over the three)."""
    z = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB + 1) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return (z ^ (z >> 31)) >> 1


class SampleKey(int):
    """A dataset index (an int, so any dataset can use it) that carries its sample's seed."""

    seed: int

    def __new__(cls, index: int, seed: int) -> SampleKey:
        key = super().__new__(cls, index)
        key.seed = seed
        return key

    def __reduce__(self) -> tuple[Any, ...]:  # to the workers through their index queue
        return SampleKey, (int(self), self.seed)


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way (to resume mid-epoch), and that
    reseeds the DataLoader's own generator every epoch, so creating a loader iterator (which
    draws a base seed for workers) never consumes the global RNG the model's dropout uses.
    With `seed_samples`, it yields SampleKeys: indices that carry each sample's seed."""

    loader_generator: torch.Generator | None = None

    def __init__(self, *args: Any, seed_samples: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seed_samples = seed_samples
        self._skip_epoch: int | None = None
        self._skip_samples = 0

    def resume_at(self, epoch: int, samples: int) -> None:
        """Start `epoch` after its first `samples` samples of this rank (once)."""
        self._skip_epoch, self._skip_samples = epoch, samples

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.loader_generator is not None:
            self.loader_generator.manual_seed((self.seed * 1_000_003 + epoch * 7_919 + self.rank) % 2**63)

    def __iter__(self) -> Iterator[int]:
        indices: Iterator[int] = super().__iter__()
        if self._skip_samples and self.epoch == self._skip_epoch:
            skip, self._skip_samples = self._skip_samples, 0
            indices = itertools.islice(indices, skip, None)
        if self.seed_samples:
            seed, epoch = self.seed, self.epoch
            return (SampleKey(i, sample_seed(seed, epoch, i)) for i in indices)
        return indices


# --------------------------------------------------------------------------- per-sample seeding


def _seeded_class(user_class: type) -> type:
    """A subclass of the dataset's own class whose fetch of a SampleKey runs under its seed.

    Only methods are added (no fields, empty __slots__), so an instance of the user's class can
    become one in place. In a worker the process's RNGs belong to the data pipeline, so they are
    simply reseeded; in the main process (num_workers = 0) they also drive the model (dropout),
    so their state is put back after the fetch: once a batch, not once a sample (saving numpy's
    state alone costs about 35 us), and only the generators the dataset draws from are reseeded
    (`_fetch_in_main`).
    """
    fetch = user_class.__getitem__
    fetch_batch = getattr(user_class, "__getitems__", None)

    def __getitem__(self: Any, key: Any) -> Any:
        if not isinstance(key, SampleKey):
            return fetch(self, key)
        return _fetch_seeded(lambda k: fetch(self, int(k)), [key])[0]

    def __getitems__(self: Any, keys: list[Any]) -> Any:
        if not keys or not isinstance(keys[0], SampleKey):
            return fetch_batch(self, keys) if fetch_batch is not None else [fetch(self, key) for key in keys]
        if fetch_batch is None:  # one seed per sample
            return _fetch_seeded(lambda k: fetch(self, int(k)), keys)
        # The dataset fetches whole batches itself: the batch runs under its first sample's seed (a
        # batch is the same in every attempt, so what it draws is too).
        saved = _saved_rngs()
        try:
            seed_all(keys[0].seed)
            return fetch_batch(self, [int(k) for k in keys])
        finally:
            _put_back(saved)

    def __reduce_ex__(self: Any, protocol: Any) -> tuple[Any, ...]:
        # Pickled (to spawned workers) as the user's own class, and seeded again on arrival.
        plain = object.__new__(user_class)
        plain.__dict__.update(self.__dict__)
        return _seeded_again, (plain,)

    return methods_subclass(user_class, {"__getitem__": __getitem__, "__getitems__": __getitems__,
                                          "__reduce_ex__": __reduce_ex__})


def _fetch_seeded(fetch_one: Any, keys: list[SampleKey]) -> list[Any]:
    """Each sample fetched as if every generator were seeded with its key's seed first."""
    saved = _saved_rngs()
    if saved is None:  # a worker: every generator reseeded for every sample (its collate_fn draws after)
        return _fetch_each(fetch_one, keys, _ALL)
    return _fetch_in_main(fetch_one, keys, saved)


def _fetch_each(fetch_one: Any, keys: list[SampleKey], which: tuple[int, ...]) -> list[Any]:
    """Each sample fetched after the generators `which` are seeded with its key's seed."""
    samples = []
    for key in keys:
        if which:
            seed_all(key.seed, which)
        samples.append(fetch_one(key))
    return samples


# The main process's generators (by their place in rng_states()) a seeded fetch was seen to draw from.
_DRAWN: set[int] = set()
_ALL = (0, 1, 2)  # torch's CPU generator, numpy's global RandomState, python's random


def _fetch_in_main(fetch_one: Any, keys: list[SampleKey], saved: tuple[Any, ...]) -> list[Any]:
    """The main process's fetch: a generator the dataset has not drawn from yet is not reseeded (a
    reseed costs 2-4 us, 8 us a sample for the three: 4.4 % of the benchmark's step, whose data
    draws nothing). After the batch, each of those is checked unmoved against its state before the
    batch; one that moved was drawn from unseeded, so it joins the reseeded ones and the batch is
    fetched again. Every sample is thus what reseeding all three gives, and a generator the data
    never draws from is never reseeded (nor put back: it did not move)."""
    drawn = _ALL
    try:
        while True:
            drawn = tuple(_DRAWN)
            samples = _fetch_each(fetch_one, keys, drawn)
            moved = _moved_unseeded(saved, drawn)
            if not moved:
                return samples
            _DRAWN.update(moved)  # and fetched again, those reseeded too (then put back)
    except BaseException:
        drawn = _ALL  # a fetch that raised may have moved any of them
        raise
    finally:
        _put_back(saved, drawn)


def _moved_unseeded(saved: tuple[Any, ...], drawn: tuple[int, ...]) -> list[int]:
    """The generators not in `drawn` whose state is no longer `saved`'s."""
    moved = []
    if 0 not in drawn and not torch.equal(torch.default_generator.get_state(), saved[0]):
        moved.append(0)
    if 1 not in drawn:
        now, before = np.random.get_state(), saved[1]
        if now[0] != before[0] or now[2:] != before[2:] or not np.array_equal(now[1], before[1]):
            moved.append(1)
    if 2 not in drawn and random.getstate() != saved[2]:
        moved.append(2)
    return moved


def drawn_from() -> set[str]:
    """Which of the main process's generators a seeded fetch has drawn from (and reseeds)."""
    return {("torch", "numpy", "random")[i] for i in _DRAWN}


def methods_subclass(user_class: type, methods: dict[str, Any]) -> type:
    """A subclass of the user's class that adds only methods (no fields, empty __slots__, the same
    name), so that an instance can become one in place."""
    namespace = {"__slots__": (), "__module__": user_class.__module__, "__qualname__": user_class.__qualname__}
    return type(user_class.__name__, (user_class,), {**namespace, **methods})


def become(obj: Any, cls: type) -> bool:
    """Swap `obj`'s class for `cls` in place; False for a class whose layout does not allow it."""
    if not hasattr(obj, "__dict__"):
        return False
    try:
        obj.__class__ = cls
    except TypeError:
        return False
    return True


def seed_all(seed: int, which: tuple[int, ...] = _ALL) -> None:
    """Seed the process's CPU generators (`which`: their places in rng_states()) with `seed`."""
    # The CPU generator only: torch.manual_seed would also queue a lazy CUDA seeding, which formats
    # the whole Python stack on every call (about 1 ms under Lightning, 64 times a batch: the cause
    # of issue 23's 0.70x). A data pipeline draws from the CPU generator (workers cannot use CUDA);
    # in the main process the CUDA generators are the model's, which this must not touch.
    if 0 in which:
        torch.default_generator.manual_seed(seed)
    if 1 in which:
        np.random.seed(seed % 2**32)
    if 2 in which:
        random.seed(seed)


def _saved_rngs() -> tuple[Any, ...] | None:
    """The process's RNG states, to put back after a fetch that reseeds them; None in a worker
    (its RNGs belong to the data pipeline). Once a batch: numpy's get_state alone takes ~40 us."""
    return None if get_worker_info() is not None else rng_states()


def _put_back(saved: tuple[Any, ...] | None, which: tuple[int, ...] = _ALL) -> None:
    if saved is not None:
        set_rng_states(saved, which)


def rng_states() -> tuple[Any, ...]:
    """The states of the process's CPU generators a data pipeline draws from (torch, numpy, random)."""
    return torch.default_generator.get_state(), np.random.get_state(), random.getstate()


def set_rng_states(states: tuple[Any, ...], which: tuple[int, ...] = _ALL) -> None:
    if 0 in which:
        torch.default_generator.set_state(states[0])
    if 1 in which:
        np.random.set_state(states[1])
    if 2 in which:
        random.setstate(states[2])


_SEEDED: dict[type, type] = {}  # the user's class -> its seeded subclass


def _seeded_again(dataset: Any) -> Any:
    seed_each_sample(dataset)
    return dataset


def seed_each_sample(dataset: Any) -> bool:
    """Make `dataset` fetch each SampleKey under its seed (in place: the loaders keep the object).
    False if it cannot be done (no instance dict, or not a map-style dataset)."""
    cls = type(dataset)
    if cls in _SEEDED.values():
        return True
    if not isinstance(dataset, Dataset) or not hasattr(cls, "__getitem__"):
        return False
    if cls not in _SEEDED:
        _SEEDED[cls] = _seeded_class(cls)
    return become(dataset, _SEEDED[cls])


# --------------------------------------------------------------------------- iterable datasets with state


def record_batch_states(dataset: Any, batch_size: int, first_batch: int = 0) -> bool:
    """Make a stateful iterable remember its own state at every batch boundary, by batch number in
    the epoch: `batch_state(it, n)` is its state after n batches. Lightning fetches a batch ahead of
    training from a loader without a length, so the state when a checkpoint is written is one batch
    past what was trained; the checkpoint takes the remembered one. The iterable is an
    IterableDataset iterated in the main process (`batch_size` samples a batch) or a stateful
    DataLoader (torchdata's StatefulDataLoader, any workers: `batch_size` 1, each item a batch).
    False if its class cannot be extended in place."""
    cls = type(dataset)
    if not getattr(cls, "_launch_records_batches", False):
        iterate = cls.__iter__

        def __iter__(self: Any) -> Iterator[Any]:
            states, size = self.__dict__["_launch_batch_states"], self.__dict__["_launch_batch_size"]
            first, self.__dict__["_launch_first_batch"] = self.__dict__["_launch_first_batch"], 0
            states.clear()
            samples = iterate(self)
            n = 0
            while True:
                if n % size == 0:
                    states[first + n // size] = self.state_dict()
                    states.pop(first + n // size - 4, None)  # a few batches back is all a save needs
                try:
                    sample = next(samples)
                except StopIteration:
                    return
                n += 1
                yield sample

        methods = {"__iter__": __iter__, "_launch_records_batches": True}
        if getattr(dataset, "num_workers", 0):  # a stateful DataLoader with workers
            load = cls.load_state_dict

            def load_state_dict(self: Any, state: Any) -> None:
                load(self, _end_finished_workers(self, state))

            methods["load_state_dict"] = load_state_dict
        if not become(dataset, methods_subclass(cls, methods)):
            return False
    dataset.__dict__.update(_launch_batch_states={}, _launch_batch_size=batch_size, _launch_first_batch=first_batch)
    return True


_ENDED = "_launch_stream_ended"  # marks a worker's dataset state: its stream had ended this epoch


def _end_finished_workers(loader: Any, state: Any) -> Any:
    """The loader's state, with each worker whose stream had already ended this epoch told to end
    it again at once.

    torchdata's StatefulDataLoader restores such a worker by iterating its dataset anew ("at least
    one batch even if we know it will lead to immediate stop iteration"): a dataset that moves on to
    its next epoch when its stream ends (as most do: the epoch counter is part of its state) then
    streams that next epoch inside this one. Its dataset state is wrapped here, and the dataset's
    class (extended in place, before the workers fork) loads the wrapped state and ends its next
    iteration without starting it; the one after streams the next epoch as it would have."""
    try:
        workers = state["_snapshot"]["_worker_snapshots"]
    except (KeyError, TypeError):
        return state
    ended = [key for key, worker in workers.items()
             if worker.get("dataset_state") is not None and (worker.get("fetcher_state") or {}).get("fetcher_ended")]
    if not ended or not _forks(loader) or not _ends_on_request(loader.dataset):
        return state
    workers = {key: {**worker, "dataset_state": {_ENDED: True, "state": worker["dataset_state"]}} if key in ended
               else worker for key, worker in workers.items()}
    return {**state, "_snapshot": {**state["_snapshot"], "_worker_snapshots": workers}}


def _forks(loader: Any) -> bool:
    """Whether the loader's workers start by fork (they then inherit the dataset's extended class;
    spawned ones would unpickle the user's own)."""
    import multiprocessing

    context = loader.multiprocessing_context
    method = context.get_start_method() if context is not None else multiprocessing.get_start_method(allow_none=False)
    return method == "fork"


def _ends_on_request(dataset: Any) -> bool:
    """Extend the iterable dataset's class in place to understand an `_ENDED` state; False if it cannot be."""
    cls = type(dataset)
    if getattr(cls, "_launch_ends_on_request", False):
        return True
    load, iterate = cls.load_state_dict, cls.__iter__

    def load_state_dict(self: Any, state: Any) -> None:
        if isinstance(state, dict) and state.get(_ENDED) is True:
            load(self, state["state"])
            self.__dict__[_ENDED] = True
        else:
            load(self, state)

    def __iter__(self: Any) -> Iterator[Any]:
        if self.__dict__.pop(_ENDED, False):
            return iter(())
        return iterate(self)

    methods = {"load_state_dict": load_state_dict, "__iter__": __iter__, "_launch_ends_on_request": True}
    return become(dataset, methods_subclass(cls, methods))


def batch_state(dataset: Any, batches: int) -> Any:
    """The dataset's state after `batches` batches of the current epoch: the one remembered at
    that boundary if a later batch was already fetched (Lightning prefetches from loaders without
    a length), else its state now."""
    if "_launch_batch_states" not in dataset.__dict__:
        return dataset.state_dict()  # not iterated through launch's recorder (never prefetched from)
    states = dataset.__dict__["_launch_batch_states"]
    if batches not in states and states and batches == max(states) + 1:
        return dataset.state_dict()  # nothing fetched past the trained batches
    if batches not in states:
        raise RuntimeError(f"no recorded state of {type(dataset).__name__} after {batches} batches (recorded: "
                           f"{sorted(states)})")
    return states[batches]
