"""What an epoch end costs rank zero, part by part: launch's throughput job against the same model
in a plain Lightning Trainer (bench/lightning_ddp.py), each timed in place (bench/common.py's
EpochEndTimedCNN: Lightning's and launch's epoch-end functions, the gather of every rank's state,
and the Trainer's collectives, waits for the other ranks included), alternated.

    python bench/epoch_end.py [--procs 2] [--steps 320] [--repeats 3]

Prints ms an epoch end for each part (the median over the repeats) for launch and plain Lightning
(a part a column lacks: "-"), nested parts indented under what contains them, and the whole
epoch end (`_FitLoop.on_advance_end`) last with its ratio. The benchmark's epochs are 32 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from launcher.render import TUNED_ALLOCATOR  # noqa: E402

# how the parts nest (a part's parent), for the indentation of the table
PARENTS = {
    "ModelCheckpoint._save_topk_checkpoint": "ModelCheckpoint.on_train_epoch_end",
    "ModelCheckpoint._save_last_checkpoint": "ModelCheckpoint.on_train_epoch_end",
    "_CheckpointConnector.dump_checkpoint": "ModelCheckpoint._save_topk_checkpoint",
    "gather of the ranks' states": "_CheckpointConnector.dump_checkpoint",
    "AtomicCheckpointIO.save_checkpoint": "ModelCheckpoint._save_topk_checkpoint",
    "TorchCheckpointIO.save_checkpoint": "ModelCheckpoint._save_topk_checkpoint",
    "LaunchModelCheckpoint._linked": "ModelCheckpoint._save_last_checkpoint",
}


def one(kind: str, procs: int, steps: int, tmp: Path, env: dict[str, str]) -> dict[str, float]:
    timings = tmp / f"{kind}.json"
    if kind == "launch":
        cmd = [sys.executable, "-m", "launcher.cli", "submit", "bench/throughput.toml", "--procs", str(procs),
               "--runs-dir", str(tmp / "runs"), "--follow", "--set", f"trainer.max_steps={steps}",
               "--set", 'model.class_path="bench.common:EpochEndTimedCNN"',
               "--set", f'model.init_args.timings="{timings}"']
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
               "bench/lightning_ddp.py", str(steps), str(timings), str(tmp / "lightning"), "EpochEndTimedCNN"]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
    return json.loads(Path(f"{timings}.epoch-end.json").read_text())["ms"]


def depth(label: str) -> int:
    return 0 if label not in PARENTS else 1 + depth(PARENTS[label])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=320)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, **TUNED_ALLOCATOR, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.procs))}
    runs: dict[str, list[dict[str, float]]] = {"launch": [], "lightning": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            order = ["launch", "lightning"] if repeat % 2 == 0 else ["lightning", "launch"]
            for kind in order:
                runs[kind].append(one(kind, args.procs, args.steps, Path(tmp) / f"{kind}-{repeat}", env))
            print(f"repeat {repeat + 1}: whole epoch end, launch {runs['launch'][-1].get('_FitLoop.on_advance_end', 0):.1f} ms, "
                  f"plain Lightning {runs['lightning'][-1].get('_FitLoop.on_advance_end', 0):.1f} ms", flush=True)
    medians = {kind: {label: statistics.median(r.get(label, 0.0) for r in rs) for label in set().union(*rs)}
               for kind, rs in runs.items()}
    whole = "_FitLoop.on_advance_end"
    labels = [label for label in set(medians["launch"]) | set(medians["lightning"]) if label != whole]
    # parents before their parts, larger first among siblings
    labels.sort(key=lambda label: -max(medians["launch"].get(label, 0), medians["lightning"].get(label, 0)))
    ordered: list[str] = []

    def place(label: str) -> None:
        if label in ordered:
            return
        if label in PARENTS and PARENTS[label] in labels:
            place(PARENTS[label])
        ordered.append(label)
        for child in labels:
            if PARENTS.get(child) == label:
                place(child)

    for label in labels:
        place(label)
    print(f"{args.procs} process(es), ms an epoch end on rank zero (median of {args.repeats}):")
    print(f"  {'part':<58} {'launch':>8} {'Lightning':>10}")
    for label in ordered:
        cells = [f"{medians[k][label]:8.2f}" if label in medians[k] else f"{'-':>8}" for k in ("launch", "lightning")]
        print(f"  {'  ' * depth(label) + label:<58} {cells[0]} {cells[1]:>10}")
    ours, theirs = medians["launch"].get(whole, 0.0), medians["lightning"].get(whole, 0.0)
    print(f"whole epoch end: launch {ours:.1f} ms, plain Lightning {theirs:.1f} ms; ratio launch/Lightning "
          f"{ours / theirs:.2f}" if theirs else f"whole epoch end: launch {ours:.1f} ms")


if __name__ == "__main__":
    main()
