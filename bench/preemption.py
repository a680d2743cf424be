"""Preemption: what a stop costs, against a run that never stopped.

    python bench/preemption.py [--steps 300] [--repeats 3]

Per repeat: one uninterrupted run (2 processes, the throughput job: SmallCNN, AdamW, synthetic
MNIST-shaped data), and one run of the same job preempted once with `launch preempt` a third of
the way in (the local backend restarts it, as SLURM's requeue would). From each run's own
`events.jsonl`: signal to checkpoint saved, checkpoint write time and size, signal to every rank
exited, steps lost (the step saved minus the step resumed from: work redone), and the start-up of
the restarted attempt (its `started` to its first training step) against the fresh run's. The
final weights are compared with the uninterrupted run's. Prints the medians, and the ratio
restart/fresh start-up last (target <= 1.2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
JOB = "bench/throughput.toml"


def launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], cwd=REPO, capture_output=True, text=True,
                          check=True)


def submit(runs: Path, steps: int, follow: bool) -> Path:
    out = launch("submit", JOB, "--procs", "2", "--runs-dir", str(runs), "--set", f"trainer.max_steps={steps}",
                 "--set", "trainer.enable_progress_bar=false", *(["--follow"] if follow else []))
    return Path(out.stdout.strip().splitlines()[-1])


def events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]


def of(run: Path, name: str) -> list[dict]:
    return [e for e in events(run) if e["event"] == name]


def startup_s(run: Path, attempt: int) -> float:
    return of(run, "first_step")[attempt]["t"] - of(run, "started")[attempt]["t"]


def wait(predicate, timeout: float = 600) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the benchmark run did not get there in time")
        time.sleep(0.05)


def same_weights(a: Path, b: Path) -> bool:
    import torch

    sa = torch.load(a / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    sb = torch.load(b / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def one(tmp: Path, steps: int) -> dict[str, float]:
    fresh = submit(tmp / "fresh", steps, follow=True)
    run = submit(tmp / "preempted", steps, follow=False)
    progress = run / "progress.json"

    def step() -> int:
        try:
            return json.loads(progress.read_text())["global_step"]
        except (OSError, ValueError, KeyError):
            return -1

    wait(lambda: step() >= steps // 3)
    launch("preempt", str(run))
    wait(lambda: of(run, "finished") or of(run, "failed"))
    if not of(run, "finished"):
        raise RuntimeError(f"the preempted run failed: {of(run, 'failed')}")
    pre, req, res = of(run, "preempted")[0], of(run, "requeued")[0], of(run, "resumed")[0]
    return {
        "signal_to_saved_s": pre["signal_to_saved_s"],
        "save_s": pre["save_s"],
        "checkpoint_mb": pre["checkpoint_bytes"] / 1e6,
        "signal_to_exit_s": req["signal_to_exit_s"],
        "steps_lost": pre["step"] - res["global_step"],
        "fresh_startup_s": startup_s(fresh, 0),
        "restart_startup_s": startup_s(run, 1),
        "same_weights": float(same_weights(run, fresh)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write the medians as JSON here (bench/charts.py draws them)")
    args = parser.parse_args()
    env_threads = os.environ.setdefault("OMP_NUM_THREADS", "1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            rows.append(one(Path(tmp) / str(i), args.steps))
            print(f"repeat {i + 1}: " + ", ".join(f"{k} {v:.3g}" for k, v in rows[-1].items()), flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"2 processes, {env_threads} thread(s) each, {args.steps} steps, preempted once at ~{args.steps // 3}:")
    print(f"signal to checkpoint saved {med['signal_to_saved_s'] * 1000:.0f} ms (the stop agreement runs about once a second)")
    print(f"checkpoint {med['checkpoint_mb']:.2f} MB written in {med['save_s'] * 1000:.0f} ms")
    print(f"signal to every rank exited {med['signal_to_exit_s']:.2f} s")
    print(f"steps lost {max(r['steps_lost'] for r in rows):.0f} (worst of {len(rows)}); "
          f"final weights equal to the uninterrupted run's: {all(r['same_weights'] for r in rows)}")
    print(f"start-up to first step: fresh {med['fresh_startup_s']:.2f} s, after preemption {med['restart_startup_s']:.2f} s")
    print(f"ratio restart/fresh start-up {med['restart_startup_s'] / med['fresh_startup_s']:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"steps": args.steps, "repeats": rows, "median": med}, indent=1) + "\n")


if __name__ == "__main__":
    main()
