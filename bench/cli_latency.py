"""CLI latency: `launch render`, `launch status`, `launch runs` wall time vs `python -c pass`.

    python bench/cli_latency.py [--repeats 15]

Target: under 0.3 s each (they never import torch). Makes one short real run first, to have a
run for `status`. Prints medians and, last, the ratio of the slowest to `python -c pass`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def median_time(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    launch = [sys.executable, "-m", "launcher.cli"]
    with tempfile.TemporaryDirectory() as runs:
        done = subprocess.run(launch + ["submit", "jobs/digits.toml", "--runs-dir", runs, "--follow",
                                        "--set", "trainer.max_epochs=1"], cwd=REPO, check=True, capture_output=True,
                              text=True)
        run_dir = done.stdout.strip().splitlines()[-1]
        baseline = median_time([sys.executable, "-c", "pass"], args.repeats)
        results = {
            "launch render": median_time(launch + ["render", "jobs/digits.toml"], args.repeats),
            "launch status": median_time(launch + ["status", run_dir], args.repeats),
            "launch runs": median_time(launch + ["--runs-dir", runs, "runs"], args.repeats),
        }
    print(f"python -c pass: {baseline * 1000:.0f} ms")
    for name, value in results.items():
        print(f"{name}: {value * 1000:.0f} ms ({value / baseline:.1f}x python -c pass)")
    slowest = max(results, key=results.get)
    print(f"slowest ({slowest}) / python -c pass: {results[slowest] / baseline:.2f}")


if __name__ == "__main__":
    main()
