"""The cost of launch's periodic full-state checkpoints (checkpoints/resume.ckpt), as a fraction of
training time, against the same run without them.

    python bench/periodic_checkpoints.py [--steps 300] [--every 10,50] [--repeats 3]

Per repeat, back to back (paired, to cancel this VM's drift): the throughput job (2 processes,
SmallCNN, AdamW, synthetic MNIST-shaped data) with no periodic checkpoint, then with one every N
steps for each N of --every. Training time is each run's own first step to its end of fit
(events.jsonl: `first_step` to `trained`). Prints, per N, the median ratio with/without (1.0 = free),
the checkpoint's size, and what a hard kill costs on average: N/2 steps trained again.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.preemption import launch, of  # noqa: E402


def train_s(run: Path) -> float:
    return of(run, "trained")[0]["t"] - of(run, "first_step")[0]["t"]


def _size(runs: Path) -> int:
    """The size of the run's last.ckpt (the periodic one is the same state, removed at the end)."""
    found = list(runs.glob("*/*/checkpoints/last.ckpt"))
    return found[0].stat().st_size if found else 0


def run_once(runs: Path, steps: int, every: int | None) -> Path:
    sets = ["--set", f"trainer.max_steps={steps}", "--set", "trainer.enable_progress_bar=false",
            "--set", "checkpoint.every_n_minutes=0"]
    if every:
        sets += ["--set", f"checkpoint.every_n_train_steps={every}"]
    out = launch("submit", "bench/throughput.toml", "--procs", "2", "--runs-dir", str(runs), *sets, "--follow")
    return Path(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", default="10,50", help="comma-separated step intervals")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    intervals = [int(x) for x in args.every.split(",")]
    ratios: dict[int, list[float]] = {n: [] for n in intervals}
    base_times: list[float] = []
    size = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            # the order alternates between repeats: a VM's first run of a series is often the slowest
            order: list[int | None] = [None, *intervals] if r % 2 == 0 else [*intervals, None]
            times = {n: train_s(run_once(Path(tmp) / f"r{r}-{n or 'none'}", args.steps, n)) for n in order}
            base = times[None]
            base_times.append(base)
            for n in intervals:
                ratios[n].append(times[n] / base)
                size[n] = _size(Path(tmp) / f"r{r}-{n}")
                print(f"repeat {r + 1}: every {n} steps: {times[n]:.2f} s vs {base:.2f} s without", flush=True)
    print(f"\n{args.steps} steps, 2 processes, median training time without periodic checkpoints: "
          f"{statistics.median(base_times):.2f} s ({statistics.median(base_times) / args.steps * 1000:.1f} ms a step)")
    for n in intervals:
        print(f"every {n:>4} steps: time ratio {statistics.median(ratios[n]):.3f} "
              f"(+{(statistics.median(ratios[n]) - 1) * 100:.1f}% training time; checkpoint {size[n] / 1e6:.2f} MB); "
              f"a hard kill then costs {n / 2:.0f} steps on average, at most {n} (plus the steps to the next safe "
              "boundary)")


if __name__ == "__main__":
    main()
