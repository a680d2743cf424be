"""Per-sample seeding (launcher/runtime/samplers.py), in-process: what a sample's augmentation
draws is a function of its seed alone, the main process's RNGs are put back after a fetch, and
the fetch does not reseed anything but the CPU generators (issue 23: torch.manual_seed's lazy CUDA
seeding formatted the whole Python stack once a sample, and cut training throughput to 0.70x)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from launcher.runtime import samplers
from launcher.runtime.samplers import SampleKey, sample_seed, seed_each_sample


class Augmenting(Dataset):
    """Every sample draws from all three of the process's RNGs."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> tuple[int, float, float, float]:
        return index, float(torch.rand(())), float(np.random.rand()), random.random()


def drawn_under(seed: int, index: int) -> tuple[int, float, float, float]:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    return Augmenting()[index]


def main_states() -> tuple[torch.Tensor, np.ndarray, object]:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


def same_states(a: tuple[torch.Tensor, np.ndarray, object], b: tuple[torch.Tensor, np.ndarray, object]) -> bool:
    return torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_each_sample_draws_from_its_own_seed_and_the_main_process_rngs_are_put_back() -> None:
    dataset = Augmenting()
    assert seed_each_sample(dataset)
    keys = [SampleKey(i, sample_seed(7, 2, i)) for i in (5, 3, 11)]
    expected = [drawn_under(sample_seed(7, 2, i), i) for i in (5, 3, 11)]
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = main_states()
    assert dataset.__getitems__(keys) == expected  # the batch path the DataLoader takes
    assert dataset[keys[1]] == expected[1]  # and one sample alone
    assert same_states(main_states(), before)
    torch.manual_seed(9)
    np.random.seed(9)
    random.seed(9)
    assert dataset[4] == drawn_under(9, 4)  # a plain index is fetched as the user's class does, unseeded


def test_a_seeded_fetch_leaves_the_cuda_generators_alone() -> None:
    # torch.manual_seed would queue a seeding of every CUDA generator (the model's, in the main
    # process) and format the Python stack to do it; the fetch seeds the CPU generator only.
    torch.cuda._lazy_seed_tracker.__init__()
    dataset = Augmenting()
    seed_each_sample(dataset)
    dataset.__getitems__([SampleKey(i, sample_seed(0, 0, i)) for i in range(8)])
    assert torch.cuda._lazy_seed_tracker.get_calls() == []


def test_workers_draw_the_same_samples_as_the_main_process() -> None:
    keys = [SampleKey(i, sample_seed(1, 0, i)) for i in range(8)]
    main, threaded = Augmenting(), Augmenting()
    seed_each_sample(main)
    seed_each_sample(threaded)
    in_main = list(DataLoader(main, sampler=keys, batch_size=4, num_workers=0, collate_fn=list))
    in_workers = list(DataLoader(threaded, sampler=keys, batch_size=4, num_workers=2, collate_fn=list))
    assert in_main == in_workers
    assert [s for batch in in_main for s in batch] == [drawn_under(k.seed, int(k)) for k in keys]


class SometimesAugmenting(Dataset):
    """Draws from python's random for odd indices only, and from nothing else (13: fails)."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> tuple[int, float]:
        if index % 2:
            if index == 13:
                np.random.rand()  # a generator not reseeded yet, moved before the fetch fails
                raise ValueError("a broken sample")
            return index, random.random()
        return index, 0.0


def test_the_main_process_reseeds_only_the_generators_its_data_draws_from_and_samples_stay_exact(monkeypatch) -> None:
    monkeypatch.setattr(samplers, "_DRAWN", set())
    dataset = SometimesAugmenting()
    seed_each_sample(dataset)
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    before = main_states()
    even = [SampleKey(i, sample_seed(3, 1, i)) for i in (0, 2, 4)]
    assert dataset.__getitems__(even) == [(0, 0.0), (2, 0.0), (4, 0.0)]
    assert samplers.drawn_from() == set() and same_states(main_states(), before)
    # A batch that draws from random unseeded is seen to, and fetched again with random reseeded:
    # every sample is what seeding all three gives, and from then on random is reseeded.
    mixed = [SampleKey(i, sample_seed(3, 1, i)) for i in (6, 7, 9, 8)]
    expected = []
    for key in mixed:
        random.seed(key.seed)
        expected.append(SometimesAugmenting()[int(key)])
    random.setstate(before[2])
    assert dataset.__getitems__(mixed) == expected
    assert samplers.drawn_from() == {"random"} and same_states(main_states(), before)
    assert dataset[mixed[1]] == expected[1]
    # A fetch that raises puts every generator back.
    with pytest.raises(ValueError):
        dataset.__getitems__([SampleKey(i, sample_seed(3, 1, i)) for i in (11, 13)])
    assert same_states(main_states(), before)
    torch.rand(3)
    np.random.rand(3)
    after_draws = main_states()
    with pytest.raises(ValueError):
        dataset.__getitems__([SampleKey(13, 1)])
    assert same_states(main_states(), after_draws)


def test_workers_reseed_every_generator_for_every_sample() -> None:
    # A worker's generators are the data pipeline's (its collate_fn draws after the fetch), so
    # there each sample leaves all three as its own seed left them.
    keys = [SampleKey(i, sample_seed(2, 0, i)) for i in range(4)]
    dataset = Collating()
    seed_each_sample(dataset)
    drawn = list(DataLoader(dataset, sampler=keys, batch_size=2, num_workers=1, collate_fn=collate_draws))
    expected = []
    for pair in (keys[:2], keys[2:]):
        random.seed(pair[1].seed)
        np.random.seed(pair[1].seed % 2**32)
        torch.manual_seed(pair[1].seed)
        expected.append(([int(k) for k in pair], random.random(), float(np.random.rand()), float(torch.rand(()))))
    assert drawn == expected


class Collating(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> int:
        return index


def collate_draws(batch: list[int]) -> tuple[list[int], float, float, float]:
    return batch, random.random(), float(np.random.rand()), float(torch.rand(()))


def test_the_sampler_yields_its_indices_as_keys_that_carry_each_samples_seed_pickled_or_not() -> None:
    import pickle

    from torch.utils.data import DistributedSampler

    from launcher.runtime.samplers import ResumableDistributedSampler

    data = list(range(40))
    for epoch in (0, 3):
        plain = DistributedSampler(data, num_replicas=3, rank=1, shuffle=True, seed=7)
        ours = ResumableDistributedSampler(data, num_replicas=3, rank=1, shuffle=True, seed=7, seed_samples=True)
        plain.set_epoch(epoch)
        ours.set_epoch(epoch)
        keys = list(ours)
        assert keys == list(plain) and all(isinstance(k, SampleKey) for k in keys)
        assert [k.seed for k in keys] == [sample_seed(7, epoch, int(k)) for k in keys]
        sent = pickle.loads(pickle.dumps(keys))  # to a worker through its index queue
        assert sent == keys and [k.seed for k in sent] == [k.seed for k in keys]
        ours.set_epoch(epoch)
        ours.resume_at(epoch, 5)
        assert [(k, k.seed) for k in ours] == [(k, k.seed) for k in keys[5:]]
    assert len({sample_seed(7, 0, 2), sample_seed(7, 3, 2), sample_seed(8, 0, 2)}) == 3
