"""Training throughput: launch (Lightning DDP over gloo, defaults on) vs a hand-written PyTorch DDP
loop, same model, data, batch size, optimizer, steps and threads per process.

    python bench/throughput.py [--procs 2 1] [--steps 200] [--repeats 3]
    python bench/throughput.py --procs 2 --steps 300 --repeats 6 --variant defaults= --lightning --rotate
    python bench/throughput.py --procs 2 --repeats 6 --variant defaults= --rotate --glibc-baseline
    python bench/throughput.py --procs 2 --repeats 5 --variant defaults= --commit before=2540c91 --rotate

Alternates the two, takes the median samples/s of each (steps after the first 20 only), and prints
the ratio ours/plain last. launch's ranks run with glibc's malloc thresholds fixed
(job.tuned_allocator), and so do the baselines: the ratio is launch's own cost, like for like.
--glibc-baseline runs the baselines with glibc's defaults instead, as a script under a bare
torchrun runs (what a user moving to launch gains, the allocator included).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from launcher.render import TUNED_ALLOCATOR

REPO = Path(__file__).resolve().parent.parent
WARMUP = 20


def samples_per_s(timings: Path, procs: int, batch: int = 64) -> float:
    times = json.loads(timings.read_text())[WARMUP:]
    return procs * batch * len(times) / sum(times)


def median_step_ms(timings: Path) -> float:
    """The median step: the steady per-step cost, without the epoch ends (checkpoint saves, metric
    syncs) that samples/s includes."""
    return 1000 * statistics.median(json.loads(timings.read_text())[WARMUP:])


def median_cpu_ms(timings: Path) -> float:
    """The median CPU time of rank zero's training thread in a step (bench/common.py's StepTimer):
    the step's own work, without the waits that wall time on a shared machine includes; NaN where
    the run did not write it (a --commit older than the CPU timings)."""
    cpu = Path(f"{timings}.cpu")
    return 1000 * statistics.median(json.loads(cpu.read_text())[WARMUP:]) if cpu.is_file() else math.nan


def epoch_end_ms(timings: Path, procs: int) -> float:
    """What the epoch ends cost, in ms a counted step: each step that spans one (an epoch's last
    batch, through the next epoch's first fetch) less the median step, summed over the counted
    steps (the model checkpoints, metric syncs and loggers of plain Lightning and launch; the
    sampler's new epoch and the metric sync of the hand-written loop)."""
    sys.path.insert(0, str(REPO))
    from bench.common import BATCH, SAMPLES

    per_epoch = SAMPLES // (BATCH * procs)
    times = json.loads(timings.read_text())
    counted = range(WARMUP, len(times))
    median = statistics.median(times[i] for i in counted)
    return 1000 * sum(times[i] - median for i in counted if i % per_epoch == per_epoch - 1) / len(counted)


# samples/s, median step (ms), median CPU a step (ms), the epoch ends (ms a step)
Measured = tuple[float, float, float, float]


def paired_ratios(runs: list[Measured], base: list[Measured]) -> list[list[float]]:
    """Repeat by repeat, `runs` against `base`: samples/s runs/base, then median step and CPU a step
    base/runs (each above 1 where `runs` is faster)."""
    pairs = list(zip(runs, base, strict=True))
    return [[r[0] / b[0] for r, b in pairs], *[[b[i] / r[i] for r, b in pairs] for i in (1, 2)]]


def measured(cmd: list[str], timings: Path, procs: int, env: dict[str, str], cwd: Path = REPO) -> Measured:
    """Run one configuration: its samples/s, its median step, its median CPU a step and what its
    epoch ends cost a step (ms). A run that fails stops the benchmark with the end of its output."""
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"{' '.join(cmd[:6])} ... (in {cwd}) exited {done.returncode}:\n{tail}")
    return samples_per_s(timings, procs), median_step_ms(timings), median_cpu_ms(timings), epoch_end_ms(timings, procs)


def ours_command(procs: int, steps: int, tmp: Path, sets: list[str]) -> tuple[list[str], Path]:
    """launch's run of the benchmark job, and where its step timings land."""
    timings = tmp / "ours.json"
    cmd = [sys.executable, "-m", "launcher.cli", "submit", "bench/throughput.toml", "--procs", str(procs),
           "--runs-dir", str(tmp / "runs"), "--follow", "--set", f"trainer.max_steps={steps}",
           "--set", f'model.init_args.timings="{timings}"']
    for item in sets:
        cmd += ["--set", item]
    return cmd, timings


def plain_command(procs: int, steps: int, tmp: Path) -> tuple[list[str], Path]:
    """The hand-written loop under a bare torchrun, and where its step timings land."""
    timings = tmp / "plain.json"
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
            "bench/plain_ddp.py", str(steps), str(timings)], timings


def lightning_command(procs: int, steps: int, tmp: Path) -> tuple[list[str], Path]:
    """The same model in a plain Lightning Trainer under a bare torchrun, and where its step timings land."""
    timings = tmp / "lightning.json"
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
            "bench/lightning_ddp.py", str(steps), str(timings), str(tmp / "lightning")], timings


def ours(procs: int, steps: int, tmp: Path, env: dict[str, str], sets: list[str]) -> Measured:
    return measured(*ours_command(procs, steps, tmp, sets), procs, env)


def commit_of(item: str) -> tuple[str, str]:
    """`--commit LABEL=REV` as (label, full commit hash); a one-line error for anything else."""
    label, _, rev = item.partition("=")
    found = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=REPO,
                           capture_output=True, text=True) if label and rev else None
    if found is None or found.returncode:
        raise SystemExit(f"--commit {item}: expected LABEL=REV with REV a commit of {REPO}")
    return label, found.stdout.strip()


def exported(commit: str, tmp: Path) -> Path:
    """The repository's tree at `commit` (`git archive`: no worktree registered, nothing of this
    checkout touched), where launch at that commit runs from its own job file and bench/common.py."""
    tree = tmp / f"tree-{commit}"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", commit], cwd=REPO, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def at_commit(tree: Path, procs: int, steps: int, tmp: Path, env: dict[str, str]) -> Measured:
    """launch as it was at an exported commit, on the same job: its CLI and its ranks import that
    tree's `launcher` (PYTHONPATH, the working directory), with the baselines' environment (the malloc
    thresholds it may not set itself: like for like; glibc's with --glibc-baseline)."""
    own = tmp / f"at-{tree.name}"  # its own timings: an older StepTimer writes no .cpu, none of ours may be read
    own.mkdir(exist_ok=True)
    cmd, timings = ours_command(procs, steps, own, [])
    return measured(cmd, timings, procs, {**env, "PYTHONPATH": str(tree)}, cwd=tree)


def plain(procs: int, steps: int, tmp: Path, env: dict[str, str]) -> Measured:
    return measured(*plain_command(procs, steps, tmp), procs, env)


def lightning(procs: int, steps: int, tmp: Path, env: dict[str, str]) -> Measured:
    return measured(*lightning_command(procs, steps, tmp), procs, env)


def environments(procs: int, args: argparse.Namespace) -> tuple[int, dict[str, str], dict[str, str]]:
    """Threads per process, ours' environment, and the baselines' (launch's malloc thresholds unless
    --glibc-baseline; launch's ranks get theirs from the job, job.tuned_allocator)."""
    threads = max(1, (os.cpu_count() or 1) // procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return threads, env, env if args.glibc_baseline else {**env, **TUNED_ALLOCATOR}


LIGHTNING = "plain-lightning"  # the label of the Lightning baseline among the variants


def paired(args: argparse.Namespace) -> None:
    """Each repeat: plain once, then every variant of ours; a variant's ratio is the median of its
    per-repeat ratios to that repeat's plain run, which cancels the machine's slow drift. With
    --rotate, repeat i starts i places later in that order, so no run is always first or last.
    With --against LABEL (plain Lightning's with --lightning; may repeat), every other variant is
    also paired with that one."""
    variants = []
    if args.lightning:
        variants.append((LIGHTNING, []))
    for item in args.variant:
        label, _, sets = item.partition("=")
        variants.append((label, [s for s in sets.split(";") if s]))
    commits = dict(commit_of(item) for item in args.commit)  # label -> commit
    variants += [(label, []) for label in commits]
    labels = [v for v, _ in variants]
    if len(set(labels)) < len(labels):
        raise SystemExit(f"--variant/--commit: each label once ({', '.join(labels)})")
    against = args.against or ([LIGHTNING] if args.lightning else [])
    for label in against:
        if label not in labels:
            raise SystemExit(f"--against {label}: not a variant ({', '.join(labels)})")
    for procs in args.procs:
        threads, env, base_env = environments(procs, args)
        plain_runs: list[Measured] = []
        ours_runs: dict[str, list[Measured]] = {label: [] for label, _ in variants}
        with tempfile.TemporaryDirectory() as tmp:
            trees = {label: exported(rev, Path(tmp)) for label, rev in commits.items()}
            for i in range(args.repeats):
                order: list[tuple[str, list[str]] | None] = [None, *variants]  # None: the hand-written loop
                if args.rotate:
                    order = order[i % len(order):] + order[:i % len(order)]
                for run in order:
                    if run is None:
                        plain_runs.append(plain(procs, args.steps, Path(tmp), base_env))
                    elif run[0] == LIGHTNING:
                        ours_runs[run[0]].append(lightning(procs, args.steps, Path(tmp), base_env))
                    elif run[0] in trees:
                        ours_runs[run[0]].append(at_commit(trees[run[0]], procs, args.steps, Path(tmp), base_env))
                    else:
                        ours_runs[run[0]].append(ours(procs, args.steps, Path(tmp), env, run[1]))
                print(f"repeat {i + 1}: plain {plain_runs[-1][0]:.0f}, "
                      + ", ".join(f"{label} {ours_runs[label][-1][0]:.0f}" for label, _ in variants)
                      + (f" (first: {'plain' if order[0] is None else order[0][0]})" if args.rotate else ""), flush=True)
        for label, sets in variants:
            runs = ours_runs[label]
            ratios, *step_ratios = paired_ratios(runs, plain_runs)
            print(f"{procs} process(es), {threads} thread(s) each, {label}: ours {statistics.median(r[0] for r in runs):.0f} "
                  f"samples/s, plain {statistics.median(p[0] for p in plain_runs):.0f}; paired ratios "
                  f"{[round(r, 3) for r in ratios]}; ratio ours/plain {statistics.median(ratios):.3f}")
            for i, (name, paired_step) in enumerate(zip(("median step", "median CPU a step"), step_ratios, strict=True), start=1):
                print(f"    {name}: ours {statistics.median(r[i] for r in runs):.1f} ms, plain "
                      f"{statistics.median(p[i] for p in plain_runs):.1f} ms; paired {[round(r, 3) for r in paired_step]}; "
                      f"ratio plain/ours {statistics.median(paired_step):.3f}")
            print(f"    epoch ends: ours {statistics.median(r[3] for r in runs):.2f} ms a step, plain "
                  f"{statistics.median(p[3] for p in plain_runs):.2f} ms a step (medians)")
            for other in (o for o in against if o != label):
                vs = paired_ratios(runs, ours_runs[other])
                print(f"    against {other}: samples/s ratio {statistics.median(vs[0]):.3f} "
                      f"{[round(r, 3) for r in vs[0]]}; median-step ratio {statistics.median(vs[1]):.3f} "
                      f"{[round(r, 3) for r in vs[1]]}; CPU-a-step ratio {statistics.median(vs[2]):.3f} "
                      f"{[round(r, 3) for r in vs[2]]}")
            if args.out:
                with open(args.out, "a") as fh:
                    fh.write(json.dumps({"label": label, "procs": procs, "ours": [r[0] for r in runs],
                                         "plain": [p[0] for p in plain_runs], "ratio": statistics.median(ratios),
                                         "paired": ratios, "sets": sets, "commit": commits.get(label)}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="K=V", help="a job override for ours")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL=K=V;K=V",
                        help="paired mode: every repeat runs plain, then ours once per variant; ratios are per repeat")
    parser.add_argument("--commit", action="append", default=[], metavar="LABEL=REV",
                        help="paired mode: also run launch as it was at git revision REV (its own job file and "
                             "bench code, exported with git archive), with the baselines' environment")
    parser.add_argument("--rotate", action="store_true",
                        help="paired mode: repeat i starts i places later in the order plain, variants")
    parser.add_argument("--lightning", action="store_true",
                        help="paired mode: also run the same model in a plain Lightning Trainer (bench/lightning_ddp.py)")
    parser.add_argument("--against", action="append", default=[], metavar="LABEL",
                        help="paired mode: also pair every other variant with this one (default: plain Lightning's)")
    parser.add_argument("--glibc-baseline", action="store_true",
                        help="the baselines with glibc's malloc defaults, not launch's thresholds (render.TUNED_ALLOCATOR)")
    parser.add_argument("--label", help="a name for this configuration in --out")
    parser.add_argument("--out", help="append the results as JSON lines here (bench/charts.py draws them)")
    args = parser.parse_args()
    if args.variant or args.lightning or args.against or args.commit:
        paired(args)
        return
    for procs in args.procs:
        threads, env, base_env = environments(procs, args)
        results: dict[str, list[float]] = {"ours": [], "plain": []}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeats):
                results["plain"].append(plain(procs, args.steps, Path(tmp), base_env)[0])
                results["ours"].append(ours(procs, args.steps, Path(tmp), env, args.set)[0])
        o, p = statistics.median(results["ours"]), statistics.median(results["plain"])
        label = f" ({', '.join(args.set)})" if args.set else ""
        print(f"{procs} process(es), {threads} thread(s) each{label}: ours {o:.0f} samples/s "
              f"{[round(x) for x in results['ours']]}, plain {p:.0f} samples/s {[round(x) for x in results['plain']]}; "
              f"ratio ours/plain {o / p:.3f}")
        if args.out:
            record = {"label": args.label or ("defaults" if not args.set else ", ".join(args.set)), "procs": procs,
                      "ours": results["ours"], "plain": results["plain"], "ratio": o / p}
            with open(args.out, "a") as fh:
                fh.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
