"""From a preemption signal to training again on SLURM, part by part, with SLURM's post-requeue
hold kept and with launch's shortened hold (`cluster.shorten_requeue_hold`).

    bash tests/slurm/cluster.sh up          # the test cluster, SLURM's default cred_expire (120 s)
    python bench/requeue_latency.py [--steps 400] [--at 60]

Per setting, one run of the throughput job (bench/throughput.toml: SmallCNN, synthetic data) on
2 nodes x 1 rank of the test cluster, preempted with `launch preempt` once it passed step --at.
From its events.jsonl: signal to checkpoint saved; saved to requeued (the ranks exit, the end hook
runs `scontrol requeue`); the hold (requeued to the batch script running again: SLURM's BeginTime
plus scheduling); start-up (the batch script to `training_started`: interpreter, torch and
Lightning imports, the model and data); restore (to `resumed`: rendezvous, process group, the
checkpoint loaded); to the first step trained again; and the total, signal to training again.
`python -c "import torch, pytorch_lightning"` is timed apart: the imports' share of start-up.
Prints each part for both settings and the ratio of the totals last.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.preemption import events, wait  # noqa: E402

PROFILE = """
[bench-slurm]
backend = "slurm"
partition = "debug"
gpus_per_node = 0
cpus_per_node = 2
max_nodes = 2
max_time = "02:00:00"
launch_mode = "srun"
shorten_requeue_hold = {shorten}
"""


def launch(cluster: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launcher.cli", "--cluster-file", str(cluster), *args], cwd=REPO,
                          capture_output=True, text=True, check=True)


def step(run: Path) -> int:
    try:
        return json.loads((run / "progress.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError):
        return -1


def one(root: Path, shorten: bool, steps: int, at: int) -> dict[str, float]:
    cluster = root / f"cluster-{shorten}.toml"
    cluster.write_text(PROFILE.format(shorten=str(shorten).lower()))
    out = launch(cluster, "submit", "bench/throughput.toml", "--cluster", "bench-slurm", "--nodes", "2", "--procs", "1",
                 "--runs-dir", str(root / "runs"), "--set", f"trainer.max_steps={steps}",
                 "--set", "trainer.enable_progress_bar=false", "--set", "checkpoint.every_n_minutes=0")
    run = Path(out.stdout.strip().splitlines()[-1])
    wait(lambda: step(run) >= at, 600)
    launch(cluster, "preempt", str(run))
    wait(lambda: any(e["event"] in ("finished", "failed") for e in events(run)), 900)
    evs = events(run)

    def t(name: str, after: float = 0.0) -> float:
        return next(e["t"] for e in evs if e["event"] == name and e["t"] >= after)

    preempted = next(e for e in evs if e["event"] == "preempted")
    saved = preempted["t"]
    requeued = t("requeued", saved)
    started = t("started", requeued)
    training = t("training_started", started)
    resumed = t("resumed", training)
    first = t("first_step", resumed) if any(e["event"] == "first_step" and e["t"] >= resumed for e in evs) else resumed
    signal_at = float(preempted["signal_at"])
    return {"signal to saved": saved - signal_at, "saved to requeued": requeued - saved,
            "hold (requeued to running)": started - requeued, "start-up (to training_started)": training - started,
            "restore (rendezvous, checkpoint)": resumed - training, "to the first step": first - resumed,
            "total: signal to training": first - signal_at}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--at", type=int, default=60, help="preempt once the run passed this step")
    args = parser.parse_args()
    began = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, pytorch_lightning"], check=True)
    imports = time.perf_counter() - began
    expire = next((line.split("cred_expire=")[1].split(",")[0] for line in Path("/etc/slurm/slurm.conf").read_text()
                   .splitlines() if "cred_expire=" in line), "120 (SLURM's default)")
    print(f"cluster: cred_expire={expire}; import torch + pytorch_lightning alone: {imports:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = {shorten: one(Path(tmp), shorten, args.steps, args.at) for shorten in (False, True)}
    width = max(len(k) for k in results[True])
    print(f"{'':{width}}  SLURM's hold  launch's (now + 2 s)")
    for part in results[True]:
        print(f"{part:{width}}  {results[False][part]:10.1f} s  {results[True][part]:10.1f} s")
    total = "total: signal to training"
    print(f"ratio, launch's / SLURM's hold, signal to training: {results[True][total] / results[False][total]:.2f}")


if __name__ == "__main__":
    main()
