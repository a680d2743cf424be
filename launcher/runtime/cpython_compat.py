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

The guard, installed once per rank (`guard_forks`): the thread that forks holds that lock across
the fork itself, so no other thread can hold it while the child is copied.
- A Python at-fork hook arms the guard (which lock: it is re-made in every child).
- C-level fork handlers (`__register_atfork`, ctypes callbacks that call `PyThread_acquire_lock`
  and `PyThread_release_lock` directly) do the rest inside fork(): take the lock (waiting with the
  GIL held: a thread holding it never waits for the GIL meanwhile), then give it back in the parent
  and, before CPython re-initialises anything, in the child. Python hooks cannot: the child's run
  too late, and Python code run while the lock is held may hand the GIL to a thread that then
  waits for the lock, holding the GIL (a gloo thread dropping its thread state): the first version
  of this guard, a Python hook holding the lock until the parent's hooks, deadlocked that way in a
  rank. No Python bytecode runs in the handlers.
- A fork that did not pass the Python hook (a C library's, or a second thread's while the first
  forks) takes and gives back a spare lock instead.

The cost: a fork by a C thread that never held the GIL waits in the handlers for the GIL, and its
child for ever; nothing in a rank forks that way (torch, gloo and NCCL do not fork; Python's
subprocess forks holding the GIL, or by vfork, which runs no handler).

Written for CPython 3.11's `_PyRuntimeState` layout, checked at install: the two pointers after
the lock must both be the main interpreter, else nothing is installed. Other versions (3.12+ fixed
the order) install nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

WRITTEN_FOR = (3, 11)
# offsets in _PyRuntimeState (3.11, Include/internal/pycore_runtime.h): five ints and
# `_finalizing`, then `interpreters` = {mutex, head, main, next_id}
MUTEX_AT, HEAD_AT, MAIN_AT = 0x20, 0x28, 0x30

_guard: _ForkGuard | None = None


def written_for() -> bool:
    return sys.version_info[:2] == WRITTEN_FOR


def _python_api(name: str, restype: type | None, *argtypes: type) -> Callable[..., Any]:
    """A function of the C API, called with the GIL held (ctypes lets it go for other functions)."""
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
        acquire = _python_api("PyThread_acquire_lock", ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
        release = _python_api("PyThread_release_lock", None, ctypes.c_void_p)
        # what the handlers take and give back when the fork did not pass `arm` (a C library's own)
        self.spare = _python_api("PyThread_allocate_lock", ctypes.c_void_p)()
        self.target = ctypes.c_void_p(self.spare)  # read by the handlers when they run
        # C-level handlers, kept as long as the process: no Python bytecode runs in them (a bytecode
        # boundary may hand the GIL to a thread that then waits for the lock: a deadlock)
        handler = ctypes.CFUNCTYPE(None)
        self.handlers = (handler(functools.partial(acquire, self.target, 1)),  # prepare: wait for it, GIL held
                         handler(functools.partial(release, self.target)),  # in the parent
                         handler(functools.partial(release, self.target)))  # in the child, before CPython re-makes it
        register = ctypes.CDLL(None)["__register_atfork"]  # what pthread_atfork calls (glibc)
        register.argtypes = [ctypes.c_void_p] * 4
        if register(*(ctypes.cast(h, ctypes.c_void_p) for h in self.handlers), None) != 0:
            raise OSError("__register_atfork failed")
        os.register_at_fork(before=self.arm, after_in_parent=self.disarm, after_in_child=self.disarm)

    def arm(self) -> None:
        # the lock is re-made in every child: where it is now, not at install
        self.target.value = ctypes.c_void_p.from_address(self.mutex_at).value

    def disarm(self) -> None:
        self.target.value = self.spare


def guarded() -> bool:
    return _guard is not None


def guard_forks() -> bool:
    """Install the guard in this process (once); False where this Python needs none or its
    layout is not the one this was written for."""
    global _guard
    if _guard is not None:
        return True
    if not written_for():
        return False
    mutex_at = head_lock_address()
    if mutex_at is None:
        return False
    try:
        _guard = _ForkGuard(mutex_at)
    except (AttributeError, OSError):  # no __register_atfork: not glibc
        return False
    return True


def run_exit_handlers() -> None:
    """Run the interpreter's exit handlers (atexit) now, and clear them: a child that
    multiprocessing started (a rank forked from its node's fork server) ends by `os._exit`, which
    skips them, and a rank's loggers and trackers (wandb, logging's flush) rely on them as they do
    at a plain interpreter's exit."""
    import atexit

    atexit._run_exitfuncs()  # CPython's own exit path calls this (Modules/atexitmodule.c); it also clears them


def start_the_fork_server(preload: str) -> None:
    """Start multiprocessing's fork server now (its "forkserver" start method), importing `preload`
    (a module name), so that it imports alongside its parent's own start-up."""
    import multiprocessing
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload([preload])
    forkserver.ensure_running()


def stop_the_fork_server() -> None:
    """End this process's fork server (if it started one) and wait for it: it would otherwise end
    only once it notices its parent gone, after the parent's exit, and a run that has ended must
    have no process left. Killed, not asked: it holds nothing to save once its ranks have ended,
    and its own exit (tearing down torch's modules, ~0.3 s) is on every attempt's way to the next."""
    import signal
    from multiprocessing import forkserver

    server = forkserver._forkserver
    if server._forkserver_pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server._forkserver_pid, signal.SIGKILL)
    server._stop()  # what CPython's own tests use (closes its pipe, reaps it); a no-op when none runs


def exit_now(code: int) -> NoReturn:
    """End this process as the interpreter's exit would, less the teardown of its modules: exit
    handlers run (logging's flush among them), standard streams flushed, then `os._exit(code)`.
    For launch's own processes that import torch (the agent: ~0.5 s of teardown, after its ranks
    ended, on every attempt's way to the next), never where user code runs: a file it left open
    would be flushed only by the teardown."""
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)
