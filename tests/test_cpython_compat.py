"""The fork guard (launcher/runtime/cpython_compat.py): a child forked while another thread holds
CPython 3.11's thread-state lock starts, in real processes and real forks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from launcher.runtime import cpython_compat
from tests.helpers.fork_drills import CHILD_EXIT, HOLD_S
from tests.helpers.launch import REPO

pytestmark = pytest.mark.skipif(not cpython_compat.written_for(), reason="the guard is for CPython 3.11")

# CPython re-made the lock before taking it in the child from 3.11.10 on (gh-112275)
HAS_THE_BUG = sys.version_info[:3] < (3, 11, 10)


def drill(*args: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "tests.helpers.fork_drills", *args], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_child_forked_while_a_thread_holds_the_lock_waits_for_it_and_starts() -> None:
    guarded = drill("hold", "guard")
    assert guarded["guarded"] is True
    assert guarded["exit"] == CHILD_EXIT
    assert guarded["fork_waited_s"] >= HOLD_S * 0.9  # the fork waited for the holder to let go
    if HAS_THE_BUG:  # the same fork without the guard: the child never starts
        unguarded = drill("hold", "none")
        assert unguarded["guarded"] is False and unguarded["exit"] is None, unguarded


def test_every_child_starts_while_c_threads_make_and_drop_thread_states() -> None:
    """The shape of a rank's hang: C threads entering Python (gloo's workers after a collective)
    while the main thread forks. Without the guard about 1 fork in 170 never started here (6 of
    1,000), so 2,000 guarded forks all starting is the guard's doing."""
    result = drill("churn", "guard", "2000")
    assert result["guarded"] is True
    assert result["c_thread_entries"] > 1000  # the C threads did run beside the forks
    assert result["never_started"] == 0 and result["other_exit"] == 0, result

