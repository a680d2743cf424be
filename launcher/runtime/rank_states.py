"""Every rank's small state (RNG, metric states, data position) gathered to rank zero, which alone
writes a checkpoint.

`torch.distributed.all_gather_object` would hand every rank every other rank's state: O(ranks) work
and memory on each of them at every save, and each tensor in it pickled as a whole `torch.save`
archive, unpickled through `torch.load` (~0.7 ms a rank's state here, 13 small tensors). Here the
tensors travel as their raw bytes beside their dtype and shape, and only rank zero receives and
rebuilds them: the same values, bit for bit, at a fraction of the cost (bench/README, section 11).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class _Bytes:
    """A CPU tensor as its dtype, shape and bytes (what pickles cheaply)."""

    __slots__ = ("data", "dtype", "shape")

    def __init__(self, tensor: torch.Tensor) -> None:
        flat = tensor.detach().contiguous().reshape(-1)
        self.dtype, self.shape = tensor.dtype, tuple(tensor.shape)
        self.data = flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""

    def __getstate__(self) -> tuple[Any, ...]:
        return self.data, self.dtype, self.shape

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.data, self.dtype, self.shape = state

    def tensor(self) -> torch.Tensor:
        if not self.data:
            return torch.empty(self.shape, dtype=self.dtype)
        return torch.frombuffer(bytearray(self.data), dtype=torch.uint8).view(self.dtype).reshape(self.shape)


def _packable(value: Any) -> bool:
    # anything else (a subclass, a GPU, sparse or quantized tensor, one that needs a gradient) pickles as before
    return (type(value) is torch.Tensor and value.device.type == "cpu" and value.layout is torch.strided
            and not value.is_quantized and not value.requires_grad)


def _through(obj: Any, leaf: Any) -> Any:
    """`obj` with `leaf` applied to each value inside its dicts, lists and plain tuples (other
    containers, a namedtuple among them, are values: left whole). `leaf` leaves plain scalars as
    they are, so a list or tuple of nothing else is copied whole: python's RNG state is 625 ints,
    three quarters of a rank's state by count, walked by rank zero once per rank at every save."""
    kind = type(obj)
    if kind is dict:
        return {k: _through(v, leaf) for k, v in obj.items()}
    if kind is list or kind is tuple:
        if all(type(v) in _SCALARS for v in obj):
            return kind(obj)
        return kind(_through(v, leaf) for v in obj)
    return leaf(obj)


_SCALARS = frozenset({int, float, bool, str, bytes, type(None)})


def pack(obj: Any) -> Any:
    """`obj` with its plain CPU tensors as `_Bytes` (tensors inside other containers pickle as before)."""
    return _through(obj, lambda value: _Bytes(value) if _packable(value) else value)


def unpack(obj: Any) -> Any:
    """The inverse of `pack`: each `_Bytes` a tensor again."""
    return _through(obj, lambda value: value.tensor() if type(value) is _Bytes else value)


def gather_to_rank_zero(mine: Any, world_size: int) -> list[Any] | None:
    """Every rank's `mine`, in rank order, on rank zero (a collective: every rank calls it);
    None on the other ranks."""
    if not (dist.is_available() and dist.is_initialized()) or world_size == 1:
        return [mine]
    rank_zero = dist.get_rank() == 0
    received: list[Any] | None = [None] * world_size if rank_zero else None
    dist.gather_object(pack(mine), received, dst=0)
    return [unpack(r) for r in received] if received is not None else None
