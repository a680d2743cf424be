"""Where a rank's heartbeat goes: one file a node on the shared filesystem, not one a rank.

Every rank hands its beat to a node-local directory (tmpfs: /dev/shm), once a second; the node's
leader (local rank 0) writes the beats of all its node's ranks as one file, `heartbeats/node-K.json`
(K: the node's rank in the attempt, so a later attempt replaces it), every HEARTBEAT_S. At 1,024 nodes x 8 ranks that is 205 file
replacements a second on the shared filesystem instead of 1,638, and a look of the watcher reads
1,024 files instead of 8,192 (README, "Health"). The leader copies each beat as it is, with its
own `beat_at`, so a rank that stopped beating still reads as silent (its node-local file stops
changing); the copy lags a beat by at most a second plus the leader's period.

The traps, and what this does about them:
- The node-local directory is keyed by the run, the node's name and rank (several SLURM nodes, or
  a local run's torchrun agents, may share one machine) and the ranks' parent process (the step's
  slurmstepd, or torchrun's agent): one attempt's ranks of one node, never an earlier attempt's
  files. The leader removes the directories earlier attempts left for the same node.
- A leader that finishes first keeps collecting until every other rank of its node is done or its
  process gone (at most DRAIN_S), and for a rank it has not heard from yet until UNSEEN_S after it
  began (one whose first beat came before the directory did); then it removes its marker, collects
  once more and removes the directory.
- A rank that sees no leader (a container with a /dev/shm of its own per task, or a leader that
  ended before it) writes `heartbeats/rank-N.json` itself, as every rank once did; so does a rank
  whose last beat (`done`) finds no leader marker after it was written. A beat written while the
  marker was there reaches the leader's last collect, which follows the marker's removal: the last
  beat of every rank is on the shared filesystem, whichever ends first.
Readers (RunDir.read_heartbeats) take both kinds of file and keep each rank's newest beat.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from launcher.processes import exists
from launcher.records import Heartbeat
from launcher.rundir import RunDir, replace_view
from launcher.stalls import HEARTBEAT_S

LOCAL_BEAT_S = 1.0  # how often a rank hands its beat to the node-local directory (tmpfs: cheap)
FALLBACK_S = 3 * HEARTBEAT_S  # no leader seen this long after the rank's first beat: write its own file
DRAIN_S = 30.0  # how long a finished leader waits for its node's other ranks to be done
DRAIN_POLL_S = 0.05  # how often it looks meanwhile (the others finish within moments of it: the end of an attempt waits)
UNSEEN_S = 3 * LOCAL_BEAT_S  # a rank sharing the directory has handed a beat this long after the leader began
LEADER = "leader"  # the leader's marker in the node-local directory


def node_local_root() -> Path:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def node_local_dir(run_id: str, host: str, node_rank: int, ppid: int) -> Path:
    return node_local_root() / f"launch-{os.getuid()}-{run_id}-{safe_host(host)}-{node_rank}-{ppid}"


def safe_host(host: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in host)


class BeatChannel:
    """A rank's way to the shared filesystem: through its node's leader, or its own file."""

    def __init__(self, run: RunDir, rank: int, local_rank: int, node_rank: int, host: str, local_ranks: int = 1) -> None:
        self.rank, self.leader, self.local_ranks = rank, local_rank == 0, local_ranks  # local_ranks: the node's ranks
        self.node_file = run.heartbeat(node=node_rank)
        self.own_file = run.heartbeat(rank)
        self.local = node_local_dir(run.run_id, host, node_rank, os.getppid())
        self.period = HEARTBEAT_S if self.leader else LOCAL_BEAT_S
        self.first_beat: float | None = None
        self.saw_leader = False
        self.began = time.monotonic()
        if self.leader:
            for old in self.local.parent.glob(self.local.name.rsplit("-", 1)[0] + "-*"):
                if old != self.local:  # an earlier attempt's, on this node
                    shutil.rmtree(old, ignore_errors=True)
            try:
                self.local.mkdir(mode=0o700, exist_ok=True)
                (self.local / LEADER).write_text(str(os.getpid()))
            except OSError:
                self.leader = False  # no node-local directory: every rank writes its own file
            else:
                atexit.register(shutil.rmtree, self.local, ignore_errors=True)

    def publish(self, beat: Heartbeat) -> None:
        """Send this rank's beat on (OSError: the caller's next beat tries again)."""
        if self.leader:
            self._collect(beat)
            return
        now = time.monotonic()
        self.first_beat = self.first_beat or now
        data = beat.dumps().encode()
        try:
            replace_view(self.local / f"rank-{self.rank}.json", data)
        except FileNotFoundError:
            pass  # no leader yet, or it has ended
        if (self.local / LEADER).exists():  # then the leader's last collect sees this beat
            self.saw_leader = True
        elif self.saw_leader or beat.done or now - self.first_beat >= FALLBACK_S:
            self.own_file.parent.mkdir(exist_ok=True)
            replace_view(self.own_file, data)

    def _collect(self, beat: Heartbeat) -> dict[int, Heartbeat]:
        """Write the node's file: this beat and the node's other ranks' (returned, by rank)."""
        others = {}
        with os.scandir(self.local) as entries:
            for entry in entries:
                other = Heartbeat.read(Path(entry.path)) if entry.name.startswith("rank-") else None
                if other is not None and other.rank != self.rank:
                    others[other.rank] = other
        beats = sorted([beat, *others.values()], key=lambda b: b.rank)
        self.node_file.parent.mkdir(exist_ok=True)
        replace_view(self.node_file, json.dumps([b.to_json() for b in beats]).encode())
        return others

    def drain(self, beat: Heartbeat) -> None:
        """The leader's last beat (`beat`: done): collect until every other rank of the node is done
        or gone, at most DRAIN_S, then remove the node-local directory."""
        if not self.leader:
            return
        deadline = time.monotonic() + DRAIN_S
        others: dict[int, Heartbeat] = {}
        while True:
            try:
                others = self._collect(beat)
            except OSError:
                pass
            waiting = [b for b in others.values() if not b.done and (b.pid is None or exists(b.pid))]
            unseen = len(others) < self.local_ranks - 1 and time.monotonic() < self.began + UNSEEN_S
            if not (waiting or unseen) or time.monotonic() >= deadline:
                break
            time.sleep(DRAIN_POLL_S)
        try:  # a rank that finds the marker gone from now on writes its own file
            (self.local / LEADER).unlink()
            self._collect(beat)  # what was written while the marker was there
        except OSError:
            pass
        shutil.rmtree(self.local, ignore_errors=True)
