"""The cost budget of launch's per-step work: every callback hook launch puts on the training step
(the stop gate, the preemption handler with its periodic schedule and the stop agreement, the
heartbeat, the progress file, Lightning's ModelCheckpoint and launch's progress bar), the per-sample
seeding of the data fetch, and the background writers, each timed in place on the real job
(`launch submit` of the throughput job, fingerprints off), as a share of step time.

    python bench/step_overhead.py [--procs 2] [--steps 300] [--set K=V]...

Prints one line per item (rank 0, and the slowest rank's total), and the total last. Items marked
[thread] run off the training thread; their share is of wall time, not a cost on the step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--set", action="append", default=[], metavar="K=V", help="a job override")
    args = parser.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.procs))}
    with tempfile.TemporaryDirectory() as tmp:
        timings = Path(tmp, "timings.json")
        cmd = [sys.executable, "-m", "launcher.cli", "submit", "bench/throughput.toml", "--procs", str(args.procs),
               "--runs-dir", str(Path(tmp, "runs")), "--follow", "--set", f"trainer.max_steps={args.steps}",
               "--set", 'model.class_path="bench.common:HookTimedCNN"', "--set", f'model.init_args.timings="{timings}"',
               "--set", "job.fingerprints=false"]
        for item in args.set:
            cmd += ["--set", item]
        subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
        ranks = [json.loads(Path(f"{timings}.rank-{r}.json").read_text()) for r in range(args.procs)]
    zero = ranks[0]
    step_ms = zero["step_s"] / zero["steps"] * 1e3
    print(f"{args.procs} process(es), {zero['steps']} timed steps, rank 0's step {step_ms:.1f} ms")
    total = 0.0
    for label, spent in sorted(zero["spent_s"].items(), key=lambda kv: -kv[1]):
        share = spent / zero["step_s"]
        per_step_us = spent / zero["steps"] * 1e6
        inside = "inside" in label  # counted within its callback's line already
        thread = label.startswith("[thread]")
        if not inside and not thread:
            total += share
        print(f"  {label:<48} {per_step_us:9.1f} us/step {share * 100:7.3f} %"
              + (" (of wall time, off the training thread)" if thread else "")
              + (" (counted in its callback's line)" if inside else ""))
    worst = max(sum(v for k, v in r["spent_s"].items() if "inside" not in k and not k.startswith("[thread]"))
                / r["step_s"] for r in ranks)
    print(f"total on the training thread, rank 0: {total * 100:.2f} % of step time (slowest rank: {worst * 100:.2f} %)")


if __name__ == "__main__":
    main()
