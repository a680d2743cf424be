"""Start-up cost: `launch submit --follow` of a 1-step job vs a bare `torchrun` of the same
Lightning model and data in a plain script (bench/plain_lightning.py: the digits MLP, 2 processes,
one training step, Lightning's defaults), both on this machine.

    python bench/startup.py [--repeats 5]

Alternates the two and prints the median wall time of each and the ratio ours/bare last (target
<= 1.10). Ours includes what a submission does beyond the plain script: validating the job file,
the run directory, the code snapshot, the detached supervisor, rank-aware output and the record.
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
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    ours, bare = [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "data")
        for i in range(args.repeats):
            bare.append(timed([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                               "bench/plain_lightning.py", str(data), str(Path(tmp, f"plain-{i}"))]))
            ours.append(timed([sys.executable, "-m", "launcher.cli", "submit", "jobs/digits.toml", "--runs-dir",
                               str(Path(tmp, "runs")), "--follow", "--set", "trainer.max_steps=1",
                               "--set", "job.test_after_fit=false", "--set", f'data.init_args.data_dir="{data}"']))
            print(f"repeat {i + 1}: launch {ours[-1]:.1f} s, bare {bare[-1]:.1f} s", flush=True)
    o, b = statistics.median(ours), statistics.median(bare)
    print(f"launch submit --follow, 1 step: {o:.1f} s {[round(x, 1) for x in ours]}")
    print(f"bare torchrun, plain Lightning script, 1 step: {b:.1f} s {[round(x, 1) for x in bare]}")
    print(f"ratio ours/bare: {o / b:.2f}")


if __name__ == "__main__":
    main()
