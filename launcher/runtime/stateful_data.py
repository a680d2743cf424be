"""Iterable datasets and loaders with a state of their own (a `state_dict`: an IterableDataset,
torchdata's StatefulDataLoader), checkpointed at the batch boundary a run has trained to. (Plain
streams without one are continued by replay: streams.py.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from launcher.runtime.samplers import become, methods_subclass


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
