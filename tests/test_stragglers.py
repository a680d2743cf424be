"""Stragglers: a rank slower than the others at its own compute is named (launcher/stragglers.py).

The arithmetic on fixed heartbeats, and a real 4-rank local run (torchrun over gloo) in which the
test's model makes one rank sleep in every training step. The evenly loaded side is checked on the
world-size-4 reference run of tests/test_exact_resume.py (no second run for it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.events import Straggler, parse
from launcher.records import Heartbeat
from launcher.stragglers import MIN_GAP_S, describe_straggler, find_stragglers
from tests.helpers.launch import run_launch
from tests.helpers.runs import events, submit, wait_end

NOW = 10_000.0


def beat(rank: int, compute_s: float | None, beat_at: float = NOW, done: bool = False) -> Heartbeat:
    return Heartbeat(rank=rank, host=f"n{rank // 2}", step=40, beat_at=beat_at, progress_at=beat_at,
                     stepped=True, compute_s=compute_s, done=done)


def test_the_rank_above_the_others_median_by_the_factor_is_named_with_it() -> None:
    beats = [beat(0, 0.100), beat(1, 0.104), beat(2, 0.160), beat(3, 0.098)]
    (found,) = find_stragglers(beats, since=NOW - 60, factor=1.2)
    assert found.beat.rank == 2 and found.median_s == 0.1 and found.factor == 1.6
    assert describe_straggler(found) == ("rank 2 (n1): 1.6x the median step compute of the other ranks "
                                         "(0.160 s vs 0.100 s)")
    # just under the factor: not named; the factor is the job's
    assert find_stragglers(beats, NOW - 60, factor=1.65) == []
    assert find_stragglers(beats, NOW - 60, factor=0) == []  # off
    # two slow ranks of four: each is compared with the others' median, both named, slowest first
    two = [beat(0, 0.1), beat(1, 0.3), beat(2, 0.2), beat(3, 0.1)]
    assert [(s.beat.rank, s.factor) for s in find_stragglers(two, NOW - 60, 1.2)] == [(1, 3.0), (2, 2.0)]


def test_evenly_loaded_ranks_tiny_gaps_old_attempts_and_finished_ranks_name_none() -> None:
    even = [beat(r, 0.100 + 0.002 * r) for r in range(8)]
    assert find_stragglers(even, NOW - 60, 1.2) == []
    tiny = [beat(0, 0.001), beat(1, 0.001), beat(2, 0.001 + MIN_GAP_S / 2)]  # 3.5x, but 2.5 ms: noise
    assert find_stragglers(tiny, NOW - 60, 1.2) == []
    # a rank of an earlier attempt (beat before `since`), a finished rank, one not measured yet
    stale = [beat(0, 0.1), beat(1, 0.1), beat(2, 0.5, beat_at=NOW - 120), beat(3, 0.5, done=True), beat(4, None)]
    assert find_stragglers(stale, NOW - 60, 1.2) == []
    assert find_stragglers([beat(0, 0.1), beat(1, 0.5, beat_at=NOW - 120)], NOW - 60, 1.2) == []  # one rank left


def test_a_heartbeat_without_compute_reads_as_before() -> None:
    old = {"rank": 1, "host": "n1", "step": 3, "progress_at": 1.0, "slowest_step_s": 0.2, "beat_at": 2.0}
    assert Heartbeat.from_json(old).compute_s is None
    assert "compute_s" not in Heartbeat.from_json(old).to_json()  # written only when measured


JOB = """
[job]
name = "straggler"
seed = 3
restart_on = "never"
test_after_fit = false

[model]
class_path = "tests.helpers.modules.StragglingMLP"
init_args = {{ in_features = 64, hidden = 32, lr = 0.01, slow_rank = 2, step_sleep = 0.08 }}

[data]
class_path = "digits"
init_args = {{ data_dir = "{data}", batch_size = 16 }}

[trainer]
max_steps = 120
enable_progress_bar = false
num_sanity_val_steps = 0
limit_val_batches = 0
"""


@pytest.mark.multiprocess
def test_a_rank_made_slow_is_named_as_the_straggler_within_60_s_and_status_says_so(tmp_path: Path) -> None:
    job = tmp_path / "straggler.toml"
    job.write_text(JOB.format(data=tmp_path / "data"))
    run_dir = submit(job, tmp_path / "runs", "--procs", "4")
    info = wait_end(run_dir, timeout=300)
    assert info["state"] == "completed", info
    all_events = events(run_dir)
    found = [parse(e) for e in all_events if e["event"] == "straggler"]
    assert [e.rank for e in found] == [2], found  # that rank, once, and no evenly loaded rank
    (straggler,) = found
    assert isinstance(straggler, Straggler) and straggler.factor > 1.2 and straggler.compute_s > 0.08
    first_step = next(parse(e) for e in all_events if e["event"] == "first_step")
    assert straggler.at - first_step.at < 60, (straggler, first_step)
    # the console says it when it is recorded; status names it with when it was first seen
    console = (run_dir / "console.log").read_text()
    assert f"[launch] straggler: rank 2 ({straggler.host}): " in console, console
    status = run_launch("status", str(run_dir)).stdout
    assert f"straggled rank 2 ({straggler.host}): {straggler.factor:g}x the median step compute" in status, status
    assert f"first seen at step {straggler.step}" in status
    seen = json.loads(run_launch("status", str(run_dir), "--json").stdout)["stragglers_seen"]
    assert [s["rank"] for s in seen] == [2]
    # every rank measured itself: the slow one by its sleep, the others well under it
    beats = {b.rank: b for b in (Heartbeat.read(p) for p in (run_dir / "heartbeats").glob("rank-*.json")) if b}
    assert sorted(beats) == [0, 1, 2, 3] and beats[2].compute_s >= 0.08
    assert all(beats[r].compute_s < 0.08 for r in (0, 1, 3)), beats


def test_the_median_of_the_others_is_the_median_without_that_value() -> None:
    import random
    import statistics

    from launcher.stragglers import median_without

    rng = random.Random(7)
    for _ in range(300):
        values = sorted(rng.choice([0.1, 0.2, 0.3, rng.random()]) for _ in range(rng.randint(2, 9)))  # ties too
        for i in range(len(values)):
            assert median_without(values, i) == statistics.median(values[:i] + values[i + 1:]), (values, i)
