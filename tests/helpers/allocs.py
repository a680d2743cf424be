"""A training step's allocation pattern, without torch: a few large blocks written and freed, as a
step's activations and gradients are. `python -m tests.helpers.allocs` prints the page faults it
costs (tests/test_allocator.py); ProbedMLP records it inside a rank (tests/test_preload.py)."""

from __future__ import annotations

import ctypes
import os
import resource

BLOCK = 6 << 20  # a CNN activation of bench/throughput.py's size: above glibc's default thresholds
BLOCKS = 3
ROUNDS = 20
STEP_PAGES = BLOCKS * BLOCK // os.sysconf("SC_PAGE_SIZE")  # what one step writes, in pages


def step_faults(rounds: int = ROUNDS) -> int:
    """Minor page faults of `rounds` steps after a first one (which faults its memory in whatever the settings)."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.memset.restype, libc.memset.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]

    def step() -> None:
        blocks = [libc.malloc(BLOCK) for _ in range(BLOCKS)]
        for block in blocks:
            libc.memset(block, 1, BLOCK)
        for block in blocks:
            libc.free(block)

    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(rounds):
        step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


if __name__ == "__main__":
    print(step_faults())
