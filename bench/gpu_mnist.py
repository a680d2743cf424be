"""On one GPU: MNIST to >= 99 % test accuracy, and what the opt-in speed settings give.

    python bench/gpu_mnist.py [--data-dir data] [--epochs 5]

Skips cleanly (exit 0, one line) where no CUDA GPU is visible. Otherwise runs `jobs/mnist.toml`
with `--gpus 1` in these configurations, one after another, each to the end (test with the best
checkpoint):

  baseline        32-bit, 2 DataLoader workers (the job as shipped)
  bf16            trainer.precision = "bf16-mixed"
  +channels_last  performance.channels_last = true
  +in_memory      data.init_args.in_memory = true (decoded dataset on the GPU, batches gathered there)
  +compile        performance.compile = true

and prints, per configuration: wall time of `launch submit --follow`, training samples/s (from the
first training step to the end of fit, from the run's events) and test accuracy; then the ratio of
the fastest configuration's samples/s to the baseline's. MNIST is downloaded by prepare_data on
first use (or put the torchvision files under --data-dir).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CONFIGS = [
    ("baseline", []),
    ("bf16", ["trainer.precision=bf16-mixed"]),
    ("+channels_last", ["trainer.precision=bf16-mixed", "performance.channels_last=true"]),
    ("+in_memory", ["trainer.precision=bf16-mixed", "performance.channels_last=true", "data.init_args.in_memory=true"]),
    ("+compile", ["trainer.precision=bf16-mixed", "performance.channels_last=true", "data.init_args.in_memory=true",
                  "performance.compile=true"]),
]


def gpus() -> int:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"], capture_output=True,
                         text=True)
    return int(out.stdout.strip() or 0)


def run(name: str, sets: list[str], args: argparse.Namespace, runs: Path) -> dict:
    cmd = [sys.executable, "-m", "launcher.cli", "submit", "jobs/mnist.toml", "--gpus", "1", "--runs-dir", str(runs),
           "--follow", "--set", f"trainer.max_epochs={args.epochs}", "--set", f"data.init_args.data_dir={args.data_dir}",
           "--set", "trainer.enable_progress_bar=false"]
    for item in sets:
        cmd += ["--set", item]
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - start
    run_dir = Path(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else None
    if done.returncode != 0 or run_dir is None:
        return {"name": name, "error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    first = next(e for e in events if e["event"] == "first_step")
    trained = next(e for e in events if e["event"] == "trained")
    batch = 128
    samples = (trained["global_step"] - first["global_step"]) * batch
    return {"name": name, "wall_s": wall, "samples_per_s": samples / (trained["t"] - first["t"]),
            "test_acc": trained["metrics"].get("test_acc", float("nan"))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=str(REPO / "data"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--runs-dir", default=str(REPO / "runs" / "bench-gpu"))
    args = parser.parse_args()
    if gpus() < 1:
        print("no CUDA GPU visible: skipped")
        return
    rows = []
    for name, sets in CONFIGS:
        row = run(name, sets, args, Path(args.runs_dir))
        rows.append(row)
        if "error" in row:
            print(f"{name}: failed: {row['error']}", flush=True)
        else:
            print(f"{name}: {row['wall_s']:.1f} s wall, {row['samples_per_s']:.0f} samples/s, "
                  f"test_acc {row['test_acc']:.4f}", flush=True)
    good = [r for r in rows if "error" not in r]
    base = next((r for r in good if r["name"] == "baseline"), None)
    if base and good:
        best = max(good, key=lambda r: r["samples_per_s"])
        print(f"ratio fastest ({best['name']})/baseline samples/s {best['samples_per_s'] / base['samples_per_s']:.2f}")


if __name__ == "__main__":
    main()
