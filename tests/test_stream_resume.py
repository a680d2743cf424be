"""Streams stopped part-way through an epoch and continued, in-process: the rest of the epoch and the
next epoch are the uninterrupted run's.

A stateful stream behind torchdata's StatefulDataLoader with workers is restored from launch's
recorded state. The batches just before the epoch's end are the hard ones: a worker whose stream
has ended carries its dataset's next-epoch state, and torchdata restores it by iterating again
(launcher/runtime/stateful_data.py: _end_finished_workers). A plain stream (no state) is replayed
(launcher/runtime/streams.py), in the main process and with workers."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from launcher.runtime.samplers import UnresumableData
from launcher.runtime.stateful_data import batch_state, record_batch_states
from launcher.runtime.streams import Replay, continue_by_replay
from tests.helpers.streams import STREAMS, EpochStream

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


# --------------------------------------------------------------------------- plain streams, by replay


def plain_loader(workers: int, resume: tuple[int, int] | None = None, first_epoch: int = 0) -> tuple[DataLoader, list[str]]:
    """A plain DataLoader over a stream without state (told its epoch, augmenting from torch's
    global generator), prepared as launch's strategy prepares it: the Trainer's epoch after the
    first iterator is the next one."""
    stream = EpochStream(torch.arange(SAMPLES).float().unsqueeze(1), torch.arange(SAMPLES), seed=3)
    dl = DataLoader(stream, batch_size=BATCH, num_workers=workers, generator=torch.Generator())
    said: list[str] = []
    later = iter(range(first_epoch + 1, 99))
    continue_by_replay(dl, Replay(first_epoch=first_epoch, current_epoch=lambda: next(later), resume=resume, seed=11,
                                  seeded=True, rank=0, say=said.append))
    return dl, said


def train(dl: DataLoader) -> tuple[list[torch.Tensor], list[float]]:
    """One epoch's batches, and what the model drew from torch's global generator after each (dropout)."""
    batches, draws = [], []
    for images, _ in dl:
        batches.append(images)
        draws.append(torch.rand(1).item())
    return batches, draws


@pytest.fixture(scope="module", params=[0, 2], ids=["main-process", "2-workers"])
def plain_uninterrupted(request) -> tuple[int, list[list[torch.Tensor]], list[float]]:
    torch.manual_seed(5)
    dl, _ = plain_loader(request.param)
    epochs = [train(dl) for _ in range(3)]
    return request.param, [batches for batches, _ in epochs], [d for _, draws in epochs for d in draws]


@pytest.mark.parametrize("stop", [1, 5, 9])
def test_a_plain_stream_is_replayed_to_any_batch_and_draws_nothing_from_the_models_generator(
        plain_uninterrupted, stop) -> None:
    workers, uninterrupted, model_draws = plain_uninterrupted
    assert len(uninterrupted[1]) == 10 and not torch.equal(uninterrupted[1][0], uninterrupted[2][0])
    torch.manual_seed(5)
    assert model_draws == [torch.rand(1).item() for _ in model_draws]  # the stream drew none of them

    resumed, said = plain_loader(workers, resume=(1, stop), first_epoch=1)
    rest, _ = train(resumed)
    assert len(rest) == 10 - stop
    assert all(torch.equal(a, b) for a, b in zip(rest, uninterrupted[1][stop:], strict=True))
    assert said[0] == (f"[launch] replaying the training stream (EpochStream) to where epoch 1 stopped: fetching and "
                       f"dropping {stop} batch(es), {stop * BATCH} items, on each rank"), said
    following, _ = train(resumed)
    assert all(torch.equal(a, b) for a, b in zip(following, uninterrupted[2], strict=True))


def test_a_stream_shorter_on_replay_than_before_is_named_in_one_line() -> None:
    dl, _ = plain_loader(0, resume=(0, 12))  # 10 batches an epoch: it cannot have trained 12
    with pytest.raises(UnresumableData) as failure:
        iter(dl)
    assert str(failure.value).startswith("the training stream (EpochStream) ended after 10 batch(es) of epoch 0 on "
                                         "replay, where the interrupted attempt had trained 12: it does not stream "
                                         "the same each time"), failure.value
