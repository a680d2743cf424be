"""Recovery without a human: a run preempted three times, a rank SIGKILLed once and a rank stopped
(SIGSTOP, a stall) once, against the same run uninterrupted.

    python bench/recovery.py [--steps 300] [--every 10] [--stall-timeout 10]

The throughput job on 2 processes with a periodic checkpoint every N steps. From the run's own
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

JOB = "bench/throughput.toml"


def submit(runs: Path, steps: int, every: int, stall: int, follow: bool) -> Path:
    out = launch("submit", JOB, "--procs", "2", "--runs-dir", str(runs), "--set", f"trainer.max_steps={steps}",
                 "--set", "trainer.enable_progress_bar=false", "--set", f"checkpoint.every_n_train_steps={every}",
                 "--set", f"job.stall_timeout_s={stall}", *(["--follow"] if follow else []))
    return Path(out.stdout.strip().splitlines()[-1])


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
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    n = args.steps
    with tempfile.TemporaryDirectory() as tmp:
        fresh = submit(Path(tmp) / "fresh", n, args.every, args.stall_timeout, follow=True)
        run = submit(Path(tmp) / "stopped", n, args.every, args.stall_timeout, follow=False)
        for k, at in enumerate((n // 8, 2 * n // 8, 3 * n // 8), start=1):
            wait(lambda at=at, k=k: step(run) >= at and len(of(run, "resumed")) == k - 1)
            launch("preempt", str(run))
        wait(lambda: len(of(run, "resumed")) == 3 and step(run) >= n // 2)
        os.kill(rank_pid(run, 1), signal.SIGKILL)
        killed_at = time.time()
        wait(lambda: len(of(run, "resumed")) == 4 and step(run) >= 5 * n // 8)
        os.kill(rank_pid(run, 1), signal.SIGSTOP)
        stopped_at = time.time()
        wait(lambda: of(run, "finished") or of(run, "failed"))
        if not of(run, "finished"):
            raise RuntimeError(f"the run failed: {of(run, 'failed')}")
        firsts = [e["t"] for e in of(run, "first_step")]
        back_after_kill = min(t for t in firsts if t > killed_at) - killed_at
        back_after_stall = min(t for t in firsts if t > stopped_at) - stopped_at
        stalled = of(run, "stalled")[0]["t"] - stopped_at
        ours, base = status(run)["ledger"], status(fresh)["ledger"]
        same = same_weights(run, fresh)
        restarts = [e["cause"][:90] for e in of(run, "restarted")]
        n_events = len(events(run))
    print(f"2 processes, {n} steps, checkpoint every {args.every} steps, stall timeout {args.stall_timeout} s; "
          f"preempted 3 times, a rank SIGKILLed once, a rank SIGSTOPped once ({n_events} events)")
    print(f"restarts: {restarts}")
    print(f"SIGKILL of a rank to training again: {back_after_kill:.1f} s")
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
