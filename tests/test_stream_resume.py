"""A stateful stream behind torchdata's StatefulDataLoader with workers, stopped after every batch
of an epoch and restored from launch's recorded state, in-process: the rest of the epoch and the
next epoch are the uninterrupted run's. The batches just before the epoch's end are the hard
ones: a worker whose stream has ended carries its dataset's next-epoch state, and torchdata
restores it by iterating again (launcher/runtime/samplers.py: _end_finished_workers)."""

from __future__ import annotations

import pytest
import torch
from torchdata.stateful_dataloader import StatefulDataLoader

from launcher.runtime.samplers import batch_state, record_batch_states
from tests.helpers.streams import STREAMS

SAMPLES, BATCH, WORKERS = 150, 16, 2  # 75 a worker: 5 batches (the last one short), 10 an epoch


def loader() -> StatefulDataLoader:
    stream = STREAMS[True, False](torch.arange(SAMPLES).float().unsqueeze(1), torch.arange(SAMPLES), seed=3)
    return StatefulDataLoader(stream, batch_size=BATCH, num_workers=WORKERS, persistent_workers=True)


def epoch(dl: StatefulDataLoader) -> list[list[int]]:
    return [labels.tolist() for _, labels in dl]


@pytest.fixture(scope="module")
def uninterrupted() -> list[list[list[int]]]:
    dl = loader()
    return [epoch(dl) for _ in range(3)]


@pytest.mark.parametrize("stop", [1, 5, 8, 9, 10])
def test_a_worker_stream_loader_resumes_after_any_batch_of_the_epoch(uninterrupted, stop) -> None:
    assert len(uninterrupted[1]) == 10 and uninterrupted[1] != uninterrupted[2]
    dl = loader()
    record_batch_states(dl, 1)
    assert epoch(dl) == uninterrupted[0]
    it = iter(dl)
    trained = [next(it)[1].tolist() for _ in range(stop)]
    next(it, None)  # Lightning fetches a batch ahead of a loader without a length
    state = batch_state(dl, stop)
    del it

    resumed = loader()
    record_batch_states(resumed, 1, stop)  # as launch's strategy does before Lightning loads the state
    resumed.load_state_dict(state)
    assert trained + epoch(resumed) == uninterrupted[1]
    assert epoch(resumed) == uninterrupted[2]
