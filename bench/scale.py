"""What watching a run costs at scale: `launch status`, `launch runs` and the stall/straggler
watcher over a simulated running run of 64 to 8,192 ranks, without torch.

    python bench/scale.py [--ranks 64 1024 8192] [--repeats 5] [--per-node 8]

Each size gets a run directory as a real run of that shape leaves it while it trains: the frozen
config, events.jsonl of three attempts (preempted twice), progress.json, every node's heartbeat
file (heartbeats/node-K.json: its ranks' beats, with their step compute, as the node's leader
writes them: runtime/beat_channel.py), every rank's alive marker (errors/rank-N.alive), and a
live supervisor process, so `launch status` takes the running path (stalls, stragglers). Prints,
per size: the wall time of `launch status` and `launch runs` (medians; `python -c pass` is the
floor), the watcher's time per look (read every heartbeat, find a stall and stragglers; it looks
every LOOK_S), and the shared-filesystem operations a real run of that size makes a second for its
heartbeats: a file replacement (a create and a rename) a node every HEARTBEAT_S, and the
watcher's opens. The ratio printed last is status at the largest size over the 1 s target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.cli_latency import median_time  # noqa: E402
from launcher import config  # noqa: E402
from launcher.entry.watch import LOOK_S  # noqa: E402
from launcher.events import Event  # noqa: E402
from launcher.records import AliveMarker, Heartbeat  # noqa: E402
from launcher.rundir import RunDir, atomic_write_text  # noqa: E402
from launcher.stalls import HEARTBEAT_S, find_stall  # noqa: E402
from launcher.stragglers import find_stragglers  # noqa: E402

TARGET_S = 1.0


def simulated_run(runs: Path, ranks: int, per_node: int) -> tuple[RunDir, subprocess.Popen]:
    run = RunDir.create(runs, "scale")
    job = REPO / "jobs" / "digits.toml"
    cfg = config.resolve(config.Request(job_file=str(job), cluster="local", nodes=max(1, ranks // per_node),
                                        procs=min(ranks, per_node), gpus=0))
    run.config.write_text(config.dumps(config.finalize(cfg, run.path, run.run_id, str(job))))
    now = time.time()
    t = now - 3600
    run.add_event(Event.SUBMITTED, t=t)
    step = 0
    for attempt in range(3):  # two preemptions, then the running attempt
        t += 30
        run.add_event(Event.STARTED, backend="local", host="node0", attempt=attempt, restart_count=attempt, t=t)
        run.add_event(Event.TRAINING_STARTED, world_size=ranks, t=t + 20)
        run.add_event(Event.FIRST_STEP, global_step=step + 1, t=t + 25)
        run.add_event(Event.CHECKPOINT_INTERVAL, every_s=600.0, save_s=2.0, why="every 10 min", t=t + 630)
        step += 1000
        if attempt < 2:
            run.add_event(Event.PREEMPTED, step=step, epoch=attempt, t=t + 900)
            run.add_event(Event.REQUEUED, after_step=step, t=t + 905)
            t += 905
    progress = {"stage": "fit", "global_step": step, "epoch": 2, "metrics": {"train_loss": 0.1, "val_acc": 0.9},
                "world_size": ranks, "time": now, "pid": os.getpid()}
    atomic_write_text(run.progress, json.dumps(progress, indent=1))
    (run.path / "heartbeats").mkdir(exist_ok=True)
    for node in range(max(1, ranks // per_node)):
        host, beats = f"node{node}", []
        for rank in range(node * per_node, min(ranks, (node + 1) * per_node)):
            beats.append(Heartbeat(rank=rank, host=host, step=step, progress_at=now, slowest_step_s=0.4, beat_at=now,
                                   stepped=True, compute_s=0.25 + 0.001 * (rank % 7), pid=100000 + rank).to_json())
            run.alive_marker(rank).write_text(AliveMarker(rank, host, 100000 + rank).dumps())
        run.heartbeat(node=node).write_text(json.dumps(beats))
    assert len(run.read_heartbeats()) == ranks
    # a live "supervisor" with the run's directory on its command line: status sees a running run
    supervisor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", str(run.path)])
    atomic_write_text(run.supervisor_pid, f"{supervisor.pid}\n")
    return run, supervisor


def watcher_look(run: RunDir, repeats: int) -> float:
    """One look of the watcher (entry/watch.py, the local supervisor): read every heartbeat, find a
    stall and the stragglers."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        beats = run.read_heartbeats()
        find_stragglers(beats, 0.0, 1.2)
        find_stall(beats, time.time(), 0.0, 120, 1800)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ranks", type=int, nargs="+", default=[64, 1024, 8192])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--per-node", type=int, default=8)
    args = parser.parse_args()
    launch = [sys.executable, "-m", "launcher.cli"]
    floor = median_time([sys.executable, "-c", "pass"], args.repeats)
    print(f"python -c pass: {floor:.3f} s")
    print(f"{'ranks':>6} {'nodes':>6} {'status s':>9} {'status --json s':>16} {'runs s':>7} {'watcher look s':>15} "
          f"{'heartbeat writes/s':>19} {'watcher reads/s':>16}")
    status_largest = 0.0
    for ranks in args.ranks:
        tmp = Path(tempfile.mkdtemp(prefix="launch-scale-"))
        try:
            run, supervisor = simulated_run(tmp / "runs", ranks, args.per_node)
            try:
                shown = subprocess.run(launch + ["status", str(run.path)], cwd=REPO, capture_output=True, text=True)
                assert "state     running" in shown.stdout, shown.stdout + shown.stderr
                status = median_time(launch + ["status", str(run.path)], args.repeats)
                status_json = median_time(launch + ["status", str(run.path), "--json"], args.repeats)
                runs = median_time(launch + ["runs", "--runs-dir", str(tmp / "runs")], args.repeats)
                look = watcher_look(run, args.repeats)
            finally:
                supervisor.kill()
                supervisor.wait()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        nodes = max(1, ranks // args.per_node)
        # every node's leader replaces its node's heartbeat file every HEARTBEAT_S (a create and a
        # rename on the metadata server); the watcher opens every node's file every LOOK_S
        print(f"{ranks:>6} {nodes:>6} {status:>9.3f} {status_json:>16.3f} {runs:>7.3f} {look:>15.4f} "
              f"{nodes / HEARTBEAT_S:>19.0f} {nodes / LOOK_S:>16.0f}")
        status_largest = status
    print(f"launch status at {args.ranks[-1]} ranks: {status_largest:.3f} s; ratio to the {TARGET_S:.0f} s target "
          f"{status_largest / TARGET_S:.3f}")


if __name__ == "__main__":
    main()
