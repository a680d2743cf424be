"""Recovery without a human: a run preempted three times, a rank SIGKILLed once and a rank stopped
(SIGSTOP, a stall) once, against the same run uninterrupted; with --slurm, on the SLURM test
cluster, where the last stop is a node's death instead of the SIGSTOP.

    python bench/recovery.py [--steps 300] [--every 10] [--stall-timeout 10]
    bash tests/slurm/cluster.sh up && python bench/recovery.py --slurm

The throughput job on 2 processes (--slurm: 2 nodes x 1 rank of the test cluster's partition
`wide`, whose 4 nodes leave room to replace a lost one; SLURM's default cred_expire, launch's
2-s requeue hold) with a periodic checkpoint every N steps. The node death SIGKILLs rank 1's
node's slurmd, its step daemon and the rank; the node is started again at the end. From the run's own
`events.jsonl`: the time from the kill to training again (the next first step), from the stall to
its detection and to training again, the steps trained twice, and the time ledger (launch
status's): where the wall time went, and goodput, against the uninterrupted run's. The final
weights are compared with the uninterrupted run's (bit for bit). Prints the ratio of the two
runs' wall times last.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.preemption import events, launch, of, same_weights, wait  # noqa: E402
from bench.requeue_latency import PROFILE  # noqa: E402

JOB = "bench/throughput.toml"
SLURM_DIR = Path(os.environ.get("LAUNCH_SLURM_DIR", "/tmp/launch-slurm"))  # tests/slurm/cluster.sh's


def submit(runs: Path, steps: int, every: int, stall: int, follow: bool, cluster: Path | None) -> Path:
    first = ("--cluster-file", str(cluster)) if cluster else ()
    where = ("--cluster", "bench-slurm", "--nodes", "2", "--procs", "1") if cluster else ("--procs", "2")
    out = launch(*first, "submit", JOB, *where, "--runs-dir", str(runs), "--set", f"trainer.max_steps={steps}",
                 "--set", "trainer.enable_progress_bar=false", "--set", f"checkpoint.every_n_train_steps={every}",
                 "--set", f"job.stall_timeout_s={stall}", *(["--follow"] if follow else []))
    return Path(out.stdout.strip().splitlines()[-1])


def kill_node(run: Path) -> str:
    """SIGKILL rank 1's node: its slurmd, the step daemon above the rank, the rank (the test
    cluster's nodes all live on this machine)."""
    victim = json.loads((run / "errors" / "rank-1.alive").read_text())
    stepd = int(Path(f"/proc/{victim['pid']}/stat").read_text().rsplit(")", 1)[1].split()[1])
    for pid in (int((SLURM_DIR / f"slurmd-{victim['host']}.pid").read_text()), stepd, victim["pid"]):
        os.kill(pid, signal.SIGKILL)
    return victim["host"]


def step(run: Path) -> int:
    try:
        return json.loads((run / "progress.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError):
        return -1


def rank_pid(run: Path, rank: int) -> int:
    return json.loads((run / "errors" / f"rank-{rank}.alive").read_text())["pid"]


def status(run: Path) -> dict:
    return json.loads(subprocess.run([sys.executable, "-m", "launcher.cli", "status", str(run), "--json"], cwd=REPO,
                                     capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=10, help="periodic checkpoint every N steps")
    parser.add_argument("--stall-timeout", type=int, default=10, help="job.stall_timeout_s of both runs")
    parser.add_argument("--slurm", action="store_true", help="on the SLURM test cluster; a node dies instead of the SIGSTOP")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    n = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        cluster = None
        if args.slurm:
            if subprocess.run(["sinfo"], capture_output=True).returncode != 0:
                raise SystemExit("no SLURM cluster answers: start the test cluster first (bash tests/slurm/cluster.sh up)")
            cluster = Path(tmp) / "cluster.toml"
            cluster.write_text(PROFILE.format(shorten="true").replace('"debug"', '"wide"').replace("max_nodes = 2",
                                                                                               "max_nodes = 4"))
        fresh = submit(Path(tmp) / "fresh", n, args.every, args.stall_timeout, True, cluster)
        run = submit(Path(tmp) / "stopped", n, args.every, args.stall_timeout, False, cluster)
        for k, at in enumerate((n // 8, 2 * n // 8, 3 * n // 8), start=1):
            wait(lambda at=at, k=k: step(run) >= at and len(of(run, "resumed")) == k - 1)
            launch(*(["--cluster-file", str(cluster)] if cluster else []), "preempt", str(run))
        wait(lambda: len(of(run, "resumed")) == 3 and step(run) >= n // 2)
        os.kill(rank_pid(run, 1), signal.SIGKILL)
        killed_at = time.time()
        wait(lambda: len(of(run, "resumed")) == 4 and step(run) >= 5 * n // 8)
        node = None
        try:
            if args.slurm:
                node = kill_node(run)
            else:
                os.kill(rank_pid(run, 1), signal.SIGSTOP)
            stopped_at = time.time()
            wait(lambda: of(run, "finished") or of(run, "failed"), 900)
        finally:
            if node:  # the node comes back (the old job then leaves SLURM)
                subprocess.run(["slurmd", "-N", node], check=True)
        if not of(run, "finished"):
            raise RuntimeError(f"the run failed: {of(run, 'failed')}")
        firsts = [e["t"] for e in of(run, "first_step")]
        back_after_kill = min(t for t in firsts if t > killed_at) - killed_at
        back_after_stall = min(t for t in firsts if t > stopped_at) - stopped_at
        stalled = of(run, "stalled")[0]["t"] - stopped_at
        replaced = of(run, "queued")[-1]["t"] - stopped_at if node else None
        ours, base = status(run)["ledger"], status(fresh)["ledger"]
        same = same_weights(run, fresh)
        restarts = [e["cause"][:90] for e in of(run, "restarted")]
        n_events = len(events(run))
    where = f"SLURM test cluster, 2 nodes x 1 rank, node {node} killed" if node else "2 processes"
    print(f"{where}, {n} steps, checkpoint every {args.every} steps, stall timeout {args.stall_timeout} s; "
          f"preempted 3 times, a rank SIGKILLed once, {'a node killed' if node else 'a rank SIGSTOPped'} once "
          f"({n_events} events)")
    print(f"restarts: {restarts}")
    print(f"SIGKILL of a rank to training again: {back_after_kill:.1f} s")
    if node:
        print(f"node death to the stall recorded: {stalled:.1f} s; to the replacement job queued: {replaced:.1f} s; "
              f"to training again: {back_after_stall:.1f} s")
    else:
        print(f"SIGSTOP of a rank to the stall recorded: {stalled:.1f} s; to training again: {back_after_stall:.1f} s")
    for name, book in (("interrupted", ours), ("uninterrupted", base)):
        phases = ", ".join(f"{k[:-2]} {v:.1f}" for k, v in book.items()
                           if k.endswith("_s") and k not in ("wall_s", "allocated_s") and v >= 0.05)
        print(f"{name}: wall {book['wall_s']:.1f} s ({phases}); recomputed {book['recomputed_steps']} steps; "
              f"goodput {book['goodput']}")
    print(f"final weights equal to the uninterrupted run's: {same}")
    print(f"ratio interrupted/uninterrupted wall time {ours['wall_s'] / base['wall_s']:.2f}")


if __name__ == "__main__":
    main()
