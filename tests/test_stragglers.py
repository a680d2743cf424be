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
from launcher.rundir import RunDir
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

[model.init_args]
in_features = 64
hidden = 32
base_sleep = 0.04
slow_rank = 2
step_sleep = 0.06
slow_from_step = {slow_from}
slow_marker = "{marker}"

[data]
class_path = "digits"
init_args = {{ data_dir = "{data}", batch_size = 16 }}

[trainer]
max_steps = {steps}
enable_progress_bar = false
num_sanity_val_steps = 0
limit_val_batches = 0
"""
SLOW_FROM, STEPS = 220, 340  # about 10 s evenly loaded (two looks of the supervisor), then about 12 s with a straggler


@pytest.mark.multiprocess
def test_an_evenly_loaded_run_names_none_and_then_a_rank_made_slow_is_named_within_60_s(tmp_path: Path) -> None:
    """4 ranks on this machine's 2 cores: their CPU time is not evenly shared, so the even work is
    a sleep of 40 ms a step on every rank, then rank 2 sleeps 60 ms more from step 220 on."""
    job = tmp_path / "straggler.toml"
    job.write_text(JOB.format(data=tmp_path / "data", slow_from=SLOW_FROM, steps=STEPS, marker=tmp_path / "slow-started"))
    run_dir = submit(job, tmp_path / "runs", "--procs", "4")
    info = wait_end(run_dir, timeout=300)
    assert info["state"] == "completed", info
    all_events = events(run_dir)
    found = [parse(e) for e in all_events if e["event"] == "straggler"]
    assert [e.rank for e in found] == [2], found  # that rank, once, and no evenly loaded rank
    (straggler,) = found
    # its numbers as first seen (the window may still hold steps from before it slowed): the others
    # near their 40 ms sleep, it above 1.2 times that
    assert isinstance(straggler, Straggler) and 0.04 <= straggler.median_s < 0.08, straggler
    assert straggler.factor > 1.2 and straggler.compute_s == pytest.approx(straggler.factor * straggler.median_s,
                                                                           rel=0.01), straggler
    # none while the ranks were evenly loaded: the supervisor looked then (every 5 s), and found none
    assert straggler.step > SLOW_FROM, straggler
    slow_since = float((tmp_path / "slow-started").read_text())
    assert 0 < straggler.at - slow_since < 60, (straggler, slow_since)
    print(f"straggler named {straggler.at - slow_since:.1f} s after it began to be slow, at {straggler.factor}x")
    # the console says it when it is recorded; status names it with when it was first seen
    console = (run_dir / "console.log").read_text()
    assert f"[launch] straggler: rank 2 ({straggler.host}): " in console, console
    assert "[launch] pre-flight checks passed on 4 rank(s) in " in console, console
    status = run_launch("status", str(run_dir)).stdout
    assert f"straggled rank 2 ({straggler.host}): {straggler.factor:g}x the median step compute" in status, status
    assert f"first seen at step {straggler.step}" in status
    seen = json.loads(run_launch("status", str(run_dir), "--json").stdout)["stragglers_seen"]
    assert [s["rank"] for s in seen] == [2]
    # every rank measured itself: the slow one by its sleeps, the others near their 40 ms
    beats = {b.rank: b for b in RunDir(run_dir).read_heartbeats()}
    assert sorted(beats) == [0, 1, 2, 3] and beats[2].compute_s >= 0.1, beats
    assert all(0.04 <= beats[r].compute_s < 0.08 for r in (0, 1, 3)), beats


def test_a_straggler_past_the_exclude_factor_makes_its_node_a_bad_node_once(tmp_path: Path) -> None:
    """job.straggler_exclude_factor (off by default): the node of a rank that slow is recorded as a
    bad node (launcher/badnodes.py), which every later SLURM job of the run excludes."""
    from launcher.badnodes import bad_nodes
    from launcher.report import status_report
    from launcher.stragglers import record_stragglers

    run = RunDir.create(tmp_path / "runs", "job")
    run.config.write_text("")  # status reads no config of it: the defaults apply
    mild = [beat(0, 0.100), beat(1, 0.100), beat(2, 0.150), beat(3, 0.100)]  # 1.5x
    seen: set[int] = set()
    excluded: set[str] = set()
    said = record_stragglers(run, find_stragglers(mild, NOW - 60, 1.2), seen, 2.0, excluded)
    assert said == ["straggler: rank 2 (n1): 1.5x the median step compute of the other ranks (0.150 s vs 0.100 s)"]
    assert bad_nodes(run.history()) == {}  # under the exclude factor
    worse = [beat(0, 0.100), beat(1, 0.100), beat(2, 0.250), beat(3, 0.100)]  # the same rank, now 2.5x
    said = record_stragglers(run, find_stragglers(worse, NOW - 60, 1.2), seen, 2.0, excluded)
    assert said == ["bad node n1: its rank 2 computes 2.5x slower than the others; later SLURM jobs of this run "
                    "exclude it"], said
    assert bad_nodes(run.history()) == {"n1": "straggler: rank 2 at 2.5x the others' step compute "
                                              "(job.straggler_exclude_factor = 2)"}
    assert record_stragglers(run, find_stragglers(worse, NOW - 60, 1.2), seen, 2.0, excluded) == []  # once
    assert [e.event for e in run.history()] == ["straggler", "bad_node"]
    _, lines = status_report(run)
    assert "excluded  n1 (straggler: rank 2 at 2.5x the others' step compute (job.straggler_exclude_factor = 2)): " \
           "later SLURM jobs of this run do not use them" in lines, lines
    off: set[str] = set()
    record_stragglers(run, find_stragglers(worse, NOW - 60, 1.2), set(), 0.0, off)  # off: no bad node
    assert off == set()
