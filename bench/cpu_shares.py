"""Where the machine's CPU goes while each configuration trains: the hand-written DDP loop, the same
model in a plain Lightning Trainer, and launch (bench/throughput.py's three commands), each run
under a sampler that reads every thread of every process of the run from /proc.

    python bench/cpu_shares.py [--procs 2] [--steps 500] [--repeats 3]

For the counted steps only (rank zero's steps after the first 20: bench/common.StepTimer writes
their wall-clock span), it prints each role's CPU in percent of one core: the ranks' training
threads, their communication threads (gloo's), their other threads (launch's progress writer and
heartbeat, loader threads), and every other process of the run (launch's CLI, supervisor, agent
and fork server; torchrun's agent), with the machine's total and the steps a second in that span.
With --repeats, the configurations alternate and each figure is the median over the repeats.
A rank is a process with a gloo thread (CPU runs over gloo, as the benchmark's).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.throughput import REPO, WARMUP, environments, lightning_command, ours_command, plain_command  # noqa: E402
from launcher.processes import descendants  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
POLL_S = 0.1
COMMUNICATION = ("gloo_tcp_loop", "pt_gloo_runloop")
ROLES = ("ranks: training threads", "ranks: communication threads", "ranks: other threads")
PROCESSES = (("launcher.cli", "launch's CLI (--follow)"), ("launcher.entry.supervisor", "launch's supervisor"),
             ("launcher.entry.agent", "launch's torchrun agent"), ("torch.distributed.run", "torchrun's agent"),
             ("forkserver", "the fork server"), ("resource_tracker", "multiprocessing's resource tracker"))


def threads(pid: int) -> dict[int, tuple[str, float]]:
    """Each thread of `pid`: its name and its CPU time (user + system, seconds)."""
    out = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            out[int(tid)] = (stat[stat.index("(") + 1:stat.rindex(")")], (int(fields[11]) + int(fields[12])) / TICK)
    except OSError:
        pass
    return out


def role(pid: int, tid: int, name: str, cmdline: str, is_rank: bool) -> str:
    if is_rank:
        return ROLES[0] if tid == pid else ROLES[1] if name in COMMUNICATION else ROLES[2]
    return next((label for key, label in PROCESSES if key in cmdline), cmdline.split(" ")[0][-40:] or "other")


def sampled(cmd: list[str], env: dict[str, str]) -> dict[tuple[int, int, str], list[tuple[float, float]]]:
    """Run `cmd`, reading every thread of its processes every POLL_S: each thread's (wall clock,
    CPU seconds) samples, keyed by (pid, tid, its role then)."""
    samples: dict[tuple[int, int, str], list[tuple[float, float]]] = defaultdict(list)
    cmdlines: dict[int, str] = {}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while proc.poll() is None:
        now = time.time()
        for pid in [proc.pid, *descendants(proc.pid)]:
            if pid not in cmdlines:
                try:
                    cmdlines[pid] = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
                except OSError:
                    continue
            seen = threads(pid)
            is_rank = any(name in COMMUNICATION for name, _ in seen.values())
            for tid, (name, cpu) in seen.items():
                samples[(pid, tid, role(pid, tid, name, cmdlines[pid], is_rank))].append((now, cpu))
        time.sleep(POLL_S)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{proc.stderr.read()[-2000:]}")
    return samples


def shares(samples: dict[tuple[int, int, str], list[tuple[float, float]]], span: tuple[float, float]) -> dict[str, float]:
    """Each role's CPU in `span`, in percent of one core. A thread's CPU at a moment is that of its
    last sample before it (its first, if it began later). A forked rank's threads are the fork
    server's until the rank starts gloo: such a thread counts under its rank role."""
    start, end = span
    used: dict[tuple[int, int], float] = defaultdict(float)
    labels: dict[tuple[int, int], str] = {}
    for (pid, tid, label), series in samples.items():
        before = [cpu for t, cpu in series if t <= start] or [series[0][1]]
        until = [cpu for t, cpu in series if t <= end] or [series[0][1]]
        used[(pid, tid)] += until[-1] - before[-1]
        if labels.get((pid, tid)) not in ROLES:
            labels[(pid, tid)] = label
    out: dict[str, float] = defaultdict(float)
    for thread, cpu in used.items():
        out[labels[thread]] += 100 * cpu / (end - start)
    return out


def measure(cmd: list[str], timings: Path, env: dict[str, str]) -> tuple[dict[str, float], float]:
    samples = sampled(cmd, env)
    start, end = json.loads(Path(f"{timings}.span").read_text())
    steps = len(json.loads(timings.read_text())) - WARMUP
    return shares(samples, (start, end)), steps / (end - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--glibc-baseline", action="store_true", help="as bench/throughput.py's")
    args = parser.parse_args()
    _, env, base_env = environments(args.procs, args)
    results: dict[str, list[tuple[dict[str, float], float]]] = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        configurations = {
            "hand-written loop": (*plain_command(args.procs, args.steps, Path(tmp)), base_env),
            "plain Lightning": (*lightning_command(args.procs, args.steps, Path(tmp)), base_env),
            "launch": (*ours_command(args.procs, args.steps, Path(tmp), []), env),
        }
        for i in range(args.repeats):
            for name, (cmd, timings, run_env) in configurations.items():
                results[name].append(measure(cmd, timings, run_env))
                print(f"repeat {i + 1}: {name} done ({results[name][-1][1]:.1f} steps/s)", flush=True)
    labels = [*ROLES] + sorted({label for runs in results.values() for shares_, _ in runs for label in shares_} - set(ROLES))
    names = list(results)
    print(f"\n{args.procs} process(es), {os.cpu_count()} core(s); CPU in the counted steps, % of one core "
          f"(median of {args.repeats} run(s) each)")
    print(f"{'':38s}" + "".join(f"{n:>20s}" for n in names))
    for label in labels:
        print(f"{label:38s}" + "".join(f"{statistics.median(s.get(label, 0.0) for s, _ in results[n]):20.1f}" for n in names))
    print(f"{'total':38s}" + "".join(f"{statistics.median(sum(s.values()) for s, _ in results[n]):20.1f}" for n in names))
    print(f"{'steps a second':38s}" + "".join(f"{statistics.median(r for _, r in results[n]):20.2f}" for n in names))


if __name__ == "__main__":
    main()
