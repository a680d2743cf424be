"""Forks beside threads that hold CPython's thread-state lock (runtime/cpython_compat.py), each in
a process of its own (the guard, once installed, stays): `python -m tests.helpers.fork_drills
DRILL guard|none [N]`, one JSON line on stdout.

- hold: the lock is held when the main thread forks, and a C thread gives it back a second
  later: does the child start, and how long did the fork wait?
- churn: two threads each start C threads (pthread_create) that enter Python and leave it, so
  each makes and drops a thread state without the GIL, as gloo's workers do after a collective,
  while the main thread forks N children: how many never started?
- gloo: three ranks of a real gloo group each run N times a collective and then a DataLoader with
  a forked worker, as a training rank does: did they all finish?
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
import threading
import time

from launcher.processes import descendants
from launcher.runtime import cpython_compat

HOLD_S = 1.0
CHILD_EXIT = 7
STARTS_WITHIN_S = 2.0


def wait_child(pid: int) -> int | None:
    """The child's exit code, or None (killed) if it has not ended within STARTS_WITHIN_S."""
    deadline = time.monotonic() + STARTS_WITHIN_S
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.0005)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return None


def fork_child() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(CHILD_EXIT)
    return pid


class _SigEvent(ctypes.Structure):
    """glibc's `struct sigevent` (x86-64 and aarch64), for a SIGEV_THREAD timer."""

    _fields_ = [("value", ctypes.c_void_p), ("signo", ctypes.c_int), ("notify", ctypes.c_int),
                ("function", ctypes.c_void_p), ("attributes", ctypes.c_void_p), ("pad", ctypes.c_int * 8)]


class _TimerSpec(ctypes.Structure):
    _fields_ = [("interval", ctypes.c_long * 2), ("value", ctypes.c_long * 2)]


SIGEV_THREAD = 2


def release_later(lock: int, after_s: float) -> None:
    """Give `lock` back `after_s` from now from a C thread (a POSIX timer's thread calls
    `PyThread_release_lock` itself): a holder that needs no GIL to let go, as CPython's own."""
    libc = ctypes.CDLL(None)
    event = _SigEvent(value=lock, notify=SIGEV_THREAD,
                      function=ctypes.cast(ctypes.pythonapi.PyThread_release_lock, ctypes.c_void_p).value)
    timer = ctypes.c_void_p()
    assert libc.timer_create(1, ctypes.byref(event), ctypes.byref(timer)) == 0  # CLOCK_MONOTONIC
    spec = _TimerSpec(value=(int(after_s), int(after_s % 1 * 1e9)))
    assert libc.timer_settime(timer, 0, ctypes.byref(spec), None) == 0


def hold() -> dict:
    """The lock is held at the fork, and given back a second later by a thread without the GIL."""
    mutex_at = cpython_compat.head_lock_address()
    assert mutex_at is not None
    mutex = ctypes.c_void_p.from_address(mutex_at).value
    acquire = cpython_compat._python_api("PyThread_acquire_lock", ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
    assert acquire(mutex, 0)
    release_later(mutex, HOLD_S)
    started = time.monotonic()
    pid = fork_child()
    waited = time.monotonic() - started
    code = wait_child(pid)
    return {"exit": code, "fork_waited_s": round(waited, 3)}


def churn(forks: int) -> dict:
    libc = ctypes.CDLL(None)
    entered = [0]

    @ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
    def in_c_thread(arg: int) -> None:
        entered[0] += 1  # Python code in a C thread: the call made it a thread state, its end drops it

    stop = threading.Event()

    def start_c_threads() -> None:
        tid = ctypes.c_ulong()
        while not stop.is_set():
            libc.pthread_create(ctypes.byref(tid), None, in_c_thread, None)
            libc.pthread_join(tid, None)

    threads = [threading.Thread(target=start_c_threads) for _ in range(2)]
    for thread in threads:
        thread.start()
    codes = [wait_child(fork_child()) for _ in range(forks)]
    stop.set()
    for thread in threads:
        thread.join()
    other = sum(1 for code in codes if code not in (None, CHILD_EXIT))
    return {"forks": forks, "never_started": codes.count(None), "other_exit": other, "c_thread_entries": entered[0]}


def gloo_rank(rank: int, world: int, port: int, guard: bool, iterations: int) -> None:
    """A rank's pattern: collectives on tensors Python holds, then a DataLoader worker forked."""
    sys.setswitchinterval(0.0002)
    if guard:
        assert cpython_compat.guard_forks()
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for i in range(iterations):
        dist.all_reduce(torch.ones(4))
        dist.all_gather_object([None] * world, {"i": i})
        for _ in DataLoader(list(range(8)), batch_size=4, num_workers=1, multiprocessing_context="fork"):
            pass
    dist.destroy_process_group()


def gloo(mode: str, iterations: int, world: int = 3, within_s: float = 60) -> dict:
    """`world` gloo ranks run `gloo_rank`: did they all finish within `within_s`?"""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    context = mp.start_processes(gloo_rank, args=(world, port, mode == "guard", iterations), nprocs=world,
                                 join=False, start_method="spawn")
    deadline = time.monotonic() + within_s
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for pid in descendants(os.getpid()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            return {"finished": False, "iterations": iterations}
    return {"finished": True, "iterations": iterations}


def python_fork_hooks(run_s: float = 0.001) -> None:
    """At-fork hooks in Python, registered before the guard (logging's run around every fork):
    their bytecode may hand the GIL to a C thread that has made its thread state and then drops
    it, which takes the lock; a guard holding the lock while they run deadlocks there."""

    def busy() -> None:
        end = time.perf_counter() + run_s
        while time.perf_counter() < end:
            pass

    os.register_at_fork(before=busy, after_in_parent=busy)


def main() -> None:
    drill, mode = sys.argv[1], sys.argv[2]
    sys.setswitchinterval(0.0002)  # hand the GIL over often: the deadlocks need a hand-over at the wrong moment
    python_fork_hooks()
    guarded = cpython_compat.guard_forks() if mode == "guard" else False
    if drill == "gloo":
        print(json.dumps({"guarded": mode == "guard", **gloo(mode, int(sys.argv[3]))}))
        return
    result = hold() if drill == "hold" else churn(int(sys.argv[3]))
    print(json.dumps({"guarded": guarded, **result}))


if __name__ == "__main__":
    main()
