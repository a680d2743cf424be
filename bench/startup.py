"""Start-up cost: `launch submit --follow` of a 0-step job vs a bare `torchrun` of an empty script,
both with 2 processes on this machine.

    python bench/startup.py [--repeats 3]

Prints the median wall time of each and the ratio ours/bare last.
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


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    ours, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp, "empty.py")
        empty.write_text("")
        for _ in range(args.repeats):
            bare.append(timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               str(empty)]))
            ours.append(timed([sys.executable, "-m", "launcher.cli", "submit", "jobs/digits.toml", "--runs-dir",
                               str(Path(tmp, "runs")), "--follow", "--set", "trainer.max_steps=0",
                               "--set", "job.test_after_fit=false"]))
    o, b = statistics.median(ours), statistics.median(bare)
    print(f"launch submit --follow, 0 steps: {o:.1f} s {[round(x, 1) for x in ours]}")
    print(f"bare torchrun, empty script: {b:.1f} s {[round(x, 1) for x in bare]}")
    print(f"ratio ours/bare: {o / b:.2f}")


if __name__ == "__main__":
    main()
