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

import functools
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


class _EpochKey(SampleKey):
    """A SampleKey as the sampler makes it: by int's own constructor, in C (an epoch's indices are
    mapped through a subclass for that epoch: no Python call a sample), its seed derived only when
    read (by a fetch that reseeds, by the pickle to a worker). 11 us a batch of 64; 56 made one by
    one in Python (bench/README section 13)."""

    of: tuple[int, int] = (0, 0)  # (job seed, epoch), on each epoch's subclass
    __new__ = int.__new__

    @property
    def seed(self) -> int:  # type: ignore[override]
        return sample_seed(*self.of, int(self))


@functools.lru_cache(maxsize=8)
def _epoch_keys(seed: int, epoch: int) -> type[_EpochKey]:
    return type("SampleKey", (_EpochKey,), {"of": (seed, epoch), "__module__": __name__})


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
        return map(_epoch_keys(self.seed, self.epoch), indices) if self.seed_samples else indices


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
