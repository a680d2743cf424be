"""Per-sample seeding (launcher/runtime/samplers.py), in-process: what a sample's augmentation
draws is a function of its seed alone, the main process's RNGs are put back after a fetch, and
the fetch does not reseed anything but the CPU generators (issue 23: torch.manual_seed's lazy CUDA
seeding formatted the whole Python stack once a sample, and cut training throughput to 0.70x)."""

from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

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


def test_each_sample_draws_from_its_own_seed_and_the_main_process_rngs_are_put_back() -> None:
    dataset = Augmenting()
    assert seed_each_sample(dataset)
    keys = [SampleKey(i, sample_seed(7, 2, i)) for i in (5, 3, 11)]
    expected = [drawn_under(sample_seed(7, 2, i), i) for i in (5, 3, 11)]
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    assert dataset.__getitems__(keys) == expected  # the batch path the DataLoader takes
    assert dataset[keys[1]] == expected[1]  # and one sample alone
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1])
    assert random.getstate() == before[2]
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
