"""Heartbeats reach the shared filesystem as one file a node (launcher/runtime/beat_channel.py):
each node's leader collects its ranks' beats from node-local memory; a rank without a leader
writes its own file; readers keep each rank's newest beat. Real files, real processes for the
"gone" checks; the 4-rank torchrun run and the 2-node x 2-rank SLURM run check the same end to end
(tests/test_exact_resume.py, tests/test_slurm.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launcher.records import Heartbeat
from launcher.rundir import RunDir
from launcher.runtime import beat_channel
from launcher.runtime.beat_channel import BeatChannel, node_local_dir


@pytest.fixture
def run(tmp_path: Path):
    run = RunDir(tmp_path / "runs" / "job" / f"20261205-000000-{os.getpid() % 10000:04x}")
    run.path.mkdir(parents=True)
    yield run
    for left in node_local_dir(run.run_id, "n1", 0, 1).parent.glob(f"launch-{os.getuid()}-{run.run_id}-*"):
        subprocess.run(["rm", "-rf", str(left)], check=False)  # what a failed assertion left in /dev/shm


def beat(rank: int, host: str, at: float, **fields) -> Heartbeat:
    return Heartbeat(rank=rank, host=host, step=rank * 10, progress_at=at - 1, beat_at=at, pid=os.getpid(), **fields)


def test_a_node_leader_writes_its_ranks_beats_as_one_file_each_as_sent(run: RunDir) -> None:
    # n2 runs two nodes of the run (a local run's two torchrun agents, or two SLURM nodes on one machine)
    nodes = {("n1", 0): [0, 1, 2], ("n2", 1): [3, 4], ("n2", 2): [5]}
    channels = {rank: BeatChannel(run, rank, local, node, host) for (host, node), ranks in nodes.items()
                for local, rank in enumerate(ranks)}
    assert [c.leader for c in channels.values()] == [True, False, False, True, False, True]
    assert channels[1].period == beat_channel.LOCAL_BEAT_S and channels[0].period == beat_channel.HEARTBEAT_S
    sent = {rank: beat(rank, host, 1000.0 + rank) for (host, _), ranks in nodes.items() for rank in ranks}
    for rank in (1, 2, 4, 0, 3, 5):  # the others first: the leaders then collect them
        channels[rank].publish(sent[rank])
    assert sorted(p.name for p in (run.path / "heartbeats").iterdir()) == ["node-0.json", "node-1.json", "node-2.json"]
    assert [b["rank"] for b in json.loads(run.heartbeat(node=0).read_text())] == [0, 1, 2]
    assert run.read_heartbeats() == [sent[r] for r in range(6)]  # every beat as its rank sent it (its own beat_at)
    # a later beat of rank 1 reaches the file with the leader's next collection, not before
    channels[1].publish(later := beat(1, "n1", 2000.0))
    assert {b.rank: b for b in run.read_heartbeats()}[1] == sent[1]
    channels[0].publish(sent[0])
    assert {b.rank: b for b in run.read_heartbeats()}[1] == later


def test_a_rank_without_a_leader_writes_its_own_file_after_the_grace(run: RunDir, monkeypatch) -> None:
    lone = BeatChannel(run, 5, 1, 0, "n1")  # its node's leader never starts (a /dev/shm of its own)
    lone.publish(first := beat(5, "n1", 10.0))
    assert run.read_heartbeats() == []  # within the grace: the leader may be starting still
    lone.first_beat = time.monotonic() - beat_channel.FALLBACK_S
    lone.publish(first)
    assert run.read_heartbeats() == [first] and run.heartbeat(5).is_file()


def test_a_finished_leader_waits_for_its_node_then_its_ranks_write_their_own(run: RunDir, monkeypatch) -> None:
    leader, other = BeatChannel(run, 0, 0, 0, "n1"), BeatChannel(run, 1, 1, 0, "n1")
    other.publish(beat(1, "n1", 10.0))
    # the other rank is alive (this process) and not done: the leader waits, at most DRAIN_S
    monkeypatch.setattr(beat_channel, "DRAIN_S", 1.0)
    started = time.monotonic()
    leader.drain(beat(0, "n1", 11.0, done=True))
    assert 1.0 <= time.monotonic() - started < 3.0
    assert not leader.local.exists()  # the node-local directory is gone with the leader
    # the other rank outlived its leader: it writes its own file at once
    other.publish(alone := beat(1, "n1", 12.0))
    assert {b.rank: b for b in run.read_heartbeats()}[1] == alone and run.heartbeat(1).is_file()

    # a rank that is done, or whose process is gone, is not waited for
    leader, done, gone = (BeatChannel(run, rank, rank, 1, "n2") for rank in range(3))
    done.publish(beat(1, "n2", 20.0, done=True))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone.publish(Heartbeat(rank=2, host="n2", beat_at=20.0, pid=dead.pid))
    started = time.monotonic()
    leader.drain(beat(0, "n2", 21.0, done=True))
    assert time.monotonic() - started < 0.5
    assert {b.rank: b.done for b in run.read_heartbeats()} == {0: True, 1: True, 2: False}
    assert json.loads(run.heartbeat(node=1).read_text())[0]["done"] is True


def test_a_new_attempt_s_leader_removes_the_node_local_files_of_an_earlier_one(run: RunDir) -> None:
    # an attempt whose ranks had another parent (not pid 1: a test process may be init's child)
    earlier = node_local_dir(run.run_id, "n1", 0, os.getppid() + 1)
    earlier.mkdir()
    (earlier / "rank-7.json").write_text(beat(7, "n1", 1.0).dumps())
    # live: another node of this run on the same machine, and another run's
    others = [node_local_dir(run.run_id, "n1", 1, 1), node_local_dir(run.run_id + "x", "n1", 0, 1)]
    for other in others:
        other.mkdir()
    try:
        BeatChannel(run, 0, 0, 0, "n1").publish(beat(0, "n1", 5.0))
        assert not earlier.exists() and all(other.exists() for other in others)
        assert [b.rank for b in run.read_heartbeats()] == [0]  # rank 7's old beat is not collected
    finally:
        for other in others:
            other.rmdir()


def test_readers_keep_each_rank_s_newest_beat_across_node_and_rank_files(run: RunDir) -> None:
    folder = run.path / "heartbeats"
    folder.mkdir()
    # the same ranks in two node files (an earlier attempt of 1 rank a node, a later one of 2), one on its own
    (folder / "node-1.json").write_text(json.dumps([beat(1, "n1", 50.0).to_json()]))
    (folder / "node-0.json").write_text(json.dumps([beat(0, "n2", 90.0).to_json(), beat(1, "n2", 40.0).to_json()]))
    (folder / "rank-2.json").write_text(beat(2, "n3", 70.0).dumps())
    (folder / "node-3.json").write_text('[{"rank": 3, "ho')  # torn: skipped
    assert [(b.rank, b.host) for b in run.read_heartbeats()] == [(0, "n2"), (1, "n1"), (2, "n3")]


def test_every_rank_s_last_beat_reaches_the_shared_filesystem_whichever_ends_first(run: RunDir) -> None:
    # rank 1's first beat came before its leader's directory (lost); its next is its last, sent
    # while its leader finishes: the leader, knowing its node has 2 ranks, waits for it
    other = BeatChannel(run, 1, 1, 0, "n1")
    other.publish(beat(1, "n1", 10.0))
    leader = BeatChannel(run, 0, 0, 0, "n1", local_ranks=2)
    last = beat(1, "n1", 12.0, done=True)
    timer = threading.Timer(0.3, other.publish, (last,))
    timer.start()
    started = time.monotonic()
    leader.drain(beat(0, "n1", 11.0, done=True))
    timer.join()
    assert 0.3 <= time.monotonic() - started < beat_channel.UNSEEN_S
    assert [p.name for p in (run.path / "heartbeats").iterdir()] == ["node-0.json"]
    assert run.read_heartbeats() == [beat(0, "n1", 11.0, done=True), last] and not leader.local.exists()

    # a last beat that finds no leader (it never came, or has ended) is written at once, within the grace
    lone = BeatChannel(run, 3, 1, 1, "n2")
    lone.publish(beat(3, "n2", 20.0))
    assert [b.rank for b in run.read_heartbeats()] == [0, 1]
    lone.publish(done := beat(3, "n2", 21.0, done=True))
    assert run.read_heartbeats()[-1] == done and run.heartbeat(3).is_file()

    # a leader does not wait for a rank it never heard from once UNSEEN_S have passed since it
    # began (that rank writes its own file: a /dev/shm of its own)
    leader = BeatChannel(run, 4, 0, 2, "n3", local_ranks=8)
    leader.began -= beat_channel.UNSEEN_S
    started = time.monotonic()
    leader.drain(beat(4, "n3", 30.0, done=True))
    assert time.monotonic() - started < 0.5 and not leader.local.exists()
