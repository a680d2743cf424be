"""Forks beside threads that hold CPython's thread-state lock (runtime/cpython_compat.py), each in
a process of its own (the guard, once installed, stays): `python -m tests.helpers.fork_drills
DRILL guard|none [N]`, one JSON line on stdout.

- hold: a thread takes the lock (as a C thread making its thread state does) and keeps it for a
  second while the main thread forks: does the child start, and how long did the fork wait?
- churn: two threads each start C threads (pthread_create) that enter Python and leave it, so
  each makes and drops a thread state without the GIL, as gloo's workers do after a collective,
  while the main thread forks N children: how many never started?
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import threading
import time

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


def hold() -> dict:
    mutex_at = cpython_compat.head_lock_address()
    assert mutex_at is not None
    mutex = ctypes.c_void_p.from_address(mutex_at).value
    acquire = cpython_compat._python_api("PyThread_acquire_lock", ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
    release = cpython_compat._python_api("PyThread_release_lock", None, ctypes.c_void_p)
    held = threading.Event()

    def holder() -> None:
        assert acquire(mutex, 0)
        held.set()
        time.sleep(HOLD_S)  # holds the lock, not the GIL
        release(mutex)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait()
    started = time.monotonic()
    pid = fork_child()
    waited = time.monotonic() - started
    code = wait_child(pid)
    thread.join()
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


def main() -> None:
    drill, mode = sys.argv[1], sys.argv[2]
    guarded = cpython_compat.guard_forks() if mode == "guard" else False
    result = hold() if drill == "hold" else churn(int(sys.argv[3]))
    print(json.dumps({"guarded": guarded, **result}))


if __name__ == "__main__":
    main()
