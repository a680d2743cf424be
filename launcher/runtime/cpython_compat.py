"""CPython's internals behind one door, as Lightning's (lightning_compat.py) and torchrun's
(entry/torchrun_compat.py) are: a fork whose child cannot deadlock on the interpreter's lock over
its thread states.

CPython 3.11 before 3.11.10 (gh-112275): the child of `os.fork()` takes that lock
(`_PyRuntime.interpreters.mutex`, HEAD_LOCK) before it re-initialises it; if another thread of
the parent held it at the fork, the child waits for ever inside `os.fork()`. In a rank, gloo's
worker threads take it after every collective: they drop the collective's tensors, and dropping a
tensor Python also holds creates and deletes a thread state (torch's decref, through pybind11's
`gil_scoped_acquire`), without holding the GIL. A DataLoader worker forked at that moment never
starts, and its rank waits for its first batch for good (CI, 2026-12-05: a world-size-4 run hung
before step 5; gdb had shown the child stuck in `_PyThreadState_DeleteExcept`).

The guard, installed once per rank (`guard_forks`):
- before every `os.fork()` (a Python at-fork hook, holding the GIL) the forking thread takes the
  lock itself; it never waits for it holding the GIL (a holder may be waiting for the GIL: it
  tries, and lets the GIL go between tries), so no other thread holds it while the child is copied;
- the parent gives it back after the fork (Python hook);
- the child gives it back at once, from a C-level fork handler (`__register_atfork`), which runs
  inside fork() before CPython re-initialises anything: Python's `after_in_child` runs too late.
  The handler is a ctypes callback that calls `PyThread_release_lock` directly (no Python code
  runs in the child before CPython's own re-initialisation). Forks that did not pass the Python
  hook (a C library's) release a spare lock instead.

The cost: a child forked by a C thread that never held the GIL (no Python fork) would wait in
the handler for a GIL it cannot have; nothing in a rank forks that way (torch, gloo and NCCL do
not fork; Python's subprocess forks holding the GIL, or with vfork, which runs no handler).

Written for CPython 3.11's `_PyRuntimeState` layout, checked at install: the two pointers after
the lock must both be the main interpreter, else nothing is installed. Other versions (3.12+ fixed
the order) install nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

WRITTEN_FOR = (3, 11)
# offsets in _PyRuntimeState (3.11, Include/internal/pycore_runtime.h): five ints and
# `_finalizing`, then `interpreters` = {mutex, head, main, next_id}
MUTEX_AT, HEAD_AT, MAIN_AT = 0x20, 0x28, 0x30
TRY_EVERY_S = 0.0002  # how often the forking thread tries the lock while another thread holds it

_guard: _ForkGuard | None = None


def written_for() -> bool:
    return sys.version_info[:2] == WRITTEN_FOR


def _python_api(name: str, restype: type | None, *argtypes: type) -> Callable[..., Any]:
    """A function of the C API called with the GIL held (never let go: see `_ForkGuard.before`)."""
    return ctypes.PYFUNCTYPE(restype, *argtypes)((name, ctypes.pythonapi))


def head_lock_address() -> int | None:
    """The address of `_PyRuntime.interpreters.mutex`, or None where the layout is not 3.11's."""
    api = ctypes.pythonapi
    try:
        base = ctypes.addressof(ctypes.c_char.in_dll(api, "_PyRuntime"))
    except ValueError:
        return None
    main_interpreter = _python_api("PyInterpreterState_Main", ctypes.c_void_p)()

    def pointer(offset: int) -> int | None:
        return ctypes.c_void_p.from_address(base + offset).value

    if not main_interpreter or pointer(HEAD_AT) != main_interpreter or pointer(MAIN_AT) != main_interpreter:
        return None
    return base + MUTEX_AT if pointer(MUTEX_AT) else None


class _ForkGuard:
    def __init__(self, mutex_at: int) -> None:
        self.mutex_at = mutex_at
        self.acquire = _python_api("PyThread_acquire_lock", ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
        self.release = _python_api("PyThread_release_lock", None, ctypes.c_void_p)
        # what a child releases when its fork did not pass `before` (a C library's own fork)
        self.spare = _python_api("PyThread_allocate_lock", ctypes.c_void_p)()
        self.target = ctypes.c_void_p(self.spare)  # read by the child's handler when it runs
        # The handler and what it calls live as long as the process (a child may call it any time).
        self.child_handler = ctypes.CFUNCTYPE(None)(functools.partial(self.release, self.target))
        register = ctypes.CDLL(None)["__register_atfork"]  # what pthread_atfork calls (glibc)
        register.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        if register(None, None, ctypes.cast(self.child_handler, ctypes.c_void_p), None) != 0:
            raise OSError("__register_atfork failed")
        os.register_at_fork(before=self.before, after_in_parent=self.after_in_parent, after_in_child=self.after_in_child)

    def before(self) -> None:
        # the lock is re-made in every child: read where it is now, not at install
        mutex = ctypes.c_void_p.from_address(self.mutex_at).value
        while not self.acquire(mutex, 0):
            time.sleep(TRY_EVERY_S)  # a holder that waits for the GIL goes on meanwhile
        self.target.value = mutex

    def after_in_parent(self) -> None:
        mutex, self.target.value = self.target.value, self.spare
        if mutex != self.spare:
            self.release(mutex)

    def after_in_child(self) -> None:
        self.target.value = self.spare  # the C handler gave the lock back before CPython re-made it


def guarded() -> bool:
    return _guard is not None


def guard_forks() -> bool:
    """Install the guard in this process (once); False where this Python needs none or its
    layout is not the one this was written for."""
    global _guard
    if _guard is not None:
        return True
    if not written_for() or not hasattr(os, "register_at_fork"):
        return False
    mutex_at = head_lock_address()
    if mutex_at is None:
        return False
    try:
        _guard = _ForkGuard(mutex_at)
    except (AttributeError, OSError):  # no __register_atfork: not glibc
        return False
    return True
