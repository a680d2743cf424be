"""Draw the benchmark results as PNGs for bench/README.md.

    pip install -e '.[bench]'
    python bench/charts.py [--results bench/results] [--out bench/results]

Reads what `throughput.py --out` and `preemption.py --out` wrote:
- throughput.png: samples/s of ours and of the plain loop per configuration (median and every
  repeat), with the ratio written on each pair;
- preemption.png: the times of one preemption (signal to saved, save, signal to exit) and the
  start-up of a fresh run against a restarted one.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def throughput_chart(rows: list[dict], out: Path) -> None:
    rows = [r for r in rows if r["procs"] == 2] + [r for r in rows if r["procs"] != 2]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.38
    for i, row in enumerate(rows):
        for offset, key, color in ((-width / 2, "plain", "#9e9e9e"), (width / 2, "ours", "#1f77b4")):
            ax.bar(i + offset, statistics.median(row[key]), width, color=color, label=key if i == 0 else None)
            ax.scatter([i + offset] * len(row[key]), row[key], color="black", s=8, zorder=3)
        top = max(row["ours"] + row["plain"])
        ax.text(i, top * 1.02, f"{row['ratio']:.3f}", ha="center", fontsize=9)
    ax.set_ylim(top=max(max(r["ours"] + r["plain"]) for r in rows) * 1.1)
    ax.set_xticks(range(len(rows)), [f"{r['label']}\n({r['procs']} proc)" for r in rows], fontsize=8)
    ax.set_ylabel("training samples/s (rank 0)")
    ax.set_title("launch vs a hand-written DDP loop (ratio ours/plain above each pair)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def preemption_chart(result: dict, out: Path) -> None:
    med = result["median"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    names = ["signal to\ncheckpoint saved", "checkpoint\nwrite", "signal to every\nrank exited"]
    values = [med["signal_to_saved_s"], med["save_s"], med["signal_to_exit_s"]]
    left.bar(names, values, color="#1f77b4")
    for i, v in enumerate(values):
        left.text(i, v, f"{v:.2f} s", ha="center", va="bottom", fontsize=9)
    left.set_ylabel("seconds (median)")
    left.set_title(f"one preemption (steps lost: {max(r['steps_lost'] for r in result['repeats']):.0f})", fontsize=10)
    starts = [med["fresh_startup_s"], med["restart_startup_s"]]
    right.bar(["fresh start", "restart after\npreemption"], starts, color=["#9e9e9e", "#1f77b4"])
    for i, v in enumerate(starts):
        right.text(i, v, f"{v:.1f} s", ha="center", va="bottom", fontsize=9)
    right.set_title(f"start-up to first step (ratio {starts[1] / starts[0]:.2f})", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", default="bench/results")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    results, out = Path(args.results), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    throughput = results / "throughput.jsonl"
    if throughput.exists():
        rows = [json.loads(line) for line in throughput.read_text().splitlines() if line.strip()]
        throughput_chart(rows, out / "throughput.png")
        print(out / "throughput.png")
    preemption = results / "preemption.json"
    if preemption.exists():
        preemption_chart(json.loads(preemption.read_text()), out / "preemption.png")
        print(out / "preemption.png")


if __name__ == "__main__":
    main()
