"""`launch sweep`: points of a grid or random search, one run each, then a ranked table.

The plan is checked whole before the first run starts (every point is resolved and validated).
On a SLURM profile the runs go in as ONE job array when every point asks for the same allocation;
each run keeps its own directory, events and job id (ARRAYID_INDEX).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher import backends, config, render
from launcher.config import JobConfig
from launcher.errors import LaunchError
from launcher.lifecycle import RunStatus, State
from launcher.rundir import RunDir, atomic_write_text, new_run_id
from launcher.submission import prepare_run, start_run
from launcher.table import format_table


def points(grid: list[str], draws: list[str], count: int | None, seed: int) -> list[dict[str, Any]]:
    """The grid's cartesian product, or `count` random draws (seeded) per grid point."""
    axes: list[tuple[str, list[Any]]] = []
    for item in grid:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise LaunchError(f"--grid {item!r}: expected KEY=V1,V2,... e.g. model.init_args.lr=0.01,0.1")
        axes.append((key, [config.parse_override(f"{key}={v}")[1] for v in values.split(",")]))
    ranges: list[tuple[str, float, float, bool, bool]] = []
    for item in draws:
        key, sep, spec = item.partition("=")
        parts = spec.split(":")
        if not sep or len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise LaunchError(f"--random {item!r}: expected KEY=LOW:HIGH or KEY=LOW:HIGH:log")
        try:
            low, high = (config.parse_override(f"{key}={v}")[1] for v in parts[:2])
            is_int = isinstance(low, int) and isinstance(high, int) and len(parts) == 2
            low, high = float(low), float(high)
        except (TypeError, ValueError):
            raise LaunchError(f"--random {item!r}: LOW and HIGH must be numbers") from None
        if not low < high or (len(parts) == 3 and low <= 0):
            raise LaunchError(f"--random {item!r}: need LOW < HIGH (and LOW > 0 for log)")
        ranges.append((key, low, high, len(parts) == 3, is_int))
    if ranges and not count:
        raise LaunchError("--random needs --count N (how many points to draw)")
    found = [dict(zip([k for k, _ in axes], combo, strict=True)) for combo in itertools.product(*[v for _, v in axes])]
    if ranges:
        rng = random.Random(seed)
        drawn = []
        for base in found or [{}]:
            for _ in range(count or 0):
                point = dict(base)
                for key, low, high, log, is_int in ranges:
                    if is_int:
                        point[key] = rng.randint(int(low), int(high))
                    elif log:
                        point[key] = float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.4g}")
                    else:
                        point[key] = float(f"{rng.uniform(low, high):.4g}")
                drawn.append(point)
        found = drawn
    if not found:
        raise LaunchError("a sweep needs --grid KEY=V1,V2 and/or --random KEY=LOW:HIGH --count N")
    return found


SCRIPT_AXIS = "args."  # --grid args.lr=0.01,0.1: the script's --lr 0.01, then --lr 0.1


def with_script_options(cfg: JobConfig, options: list[str]) -> JobConfig:
    """A point's `args.NAME=VALUE` as the script's `--NAME VALUE` (LightningCLI: args.model.lr ->
    --model.lr): replacing the option where job.args already gives it, else appended."""
    args = list(cfg.job.args)
    for item in options:
        key, _, value = item.partition("=")
        flag = "--" + key.removeprefix(SCRIPT_AXIS)
        text = str(config.parse_override(f"v={value}")[1])
        text = {"True": "true", "False": "false"}.get(text, text)
        for i, arg in enumerate(args):
            if arg == flag and i + 1 < len(args):
                args[i + 1] = text
                break
            if arg.startswith(flag + "="):
                args[i] = f"{flag}={text}"
                break
        else:
            args += [flag, text]
    return dataclasses.replace(cfg, job=dataclasses.replace(cfg.job, args=args))


def as_override(key: str, value: Any) -> str:
    """A point's value as a `--set` override (TOML-typed, as the user would write it)."""
    import tomli_w

    return f"{key}={tomli_w.dumps({'v': value}).partition('=')[2].strip()}"


@dataclass(frozen=True)
class Plan:
    """A sweep ready to start: every point's validated config, and how the runs are queued."""

    points: list[dict[str, Any]]
    configs: list[JobConfig]
    metric: str
    mode: str
    array: bool

    @property
    def backend(self) -> str:
        return self.configs[0].cluster.backend


def plan(found: list[dict[str, Any]], resolve_point: Callable[[tuple[str, ...]], JobConfig], job_file: str,
         metric: str | None, mode: str | None, no_array: bool) -> Plan:
    """Resolve every point first (a bad one stops the sweep before anything runs)."""
    configs = [resolve_point(tuple(as_override(k, v) for k, v in point.items())) for point in found]
    first = configs[0]
    metric = metric or first.checkpoint.monitor or "val_loss"
    mode = mode or (first.checkpoint.mode if metric == first.checkpoint.monitor else "min")
    # One SLURM job array when every point asks for the same allocation (a grid over, say,
    # resources.nodes cannot share one); else one job per point. (The run directory does not
    # enter the comparison: a placeholder stands in for each.)
    array = first.cluster.backend == "slurm" and len(configs) > 1 and not no_array and len(
        {repr(render.array_directives_key(config.finalize(c, Path("/X/X"), "X", job_file))) for c in configs}) == 1
    return Plan(found, configs, metric, mode, array)


def wait(run: RunDir, every_s: float = 1.0) -> RunStatus:
    while True:
        info = backends.status(run)
        if info.over:
            return info
        time.sleep(every_s)


def run_sweep(p: Plan, runs_dir: Path, job_file: str) -> int:
    """Start every run, wait for all, print and write the ranked table; 0 if every run completed."""
    first = p.configs[0]
    sweep_id = new_run_id()
    folder = runs_dir / first.job.name / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    order = {"local": "one after another"}.get(p.backend, "as one job array" if p.array else "all queued at once")
    say(f"sweep {sweep_id}: {len(p.points)} runs of {first.job.name} ({order}), ranked by {p.metric} ({p.mode})")
    record: dict[str, Any] = {"sweep": sweep_id, "job": job_file, "metric": p.metric, "mode": p.mode, "runs": []}

    def report(i: int, run: RunDir, info: RunStatus) -> None:
        shown = " ".join(f"{k}={v}" for k, v in p.points[i].items())
        value = info.metrics.get(p.metric)
        say(f"[{i + 1}/{len(p.points)}] {shown}: {info.state}"
            + (f", {p.metric} {value:.4g}" if value is not None else "") + f"  ({run.run_id})")

    runs: list[RunDir] = []
    if p.array:
        prepared = [prepare_run(cfg, runs_dir, job_file, array=True, sweep=sweep_id, point=p.points[i])
                    for i, cfg in enumerate(p.configs)]
        runs = [run for _, run in prepared]
        out_dir = folder / sweep_id
        out_dir.mkdir()
        try:
            record["slurm_array_job_id"] = backends.named(p.backend).submit_many([c for c, _ in prepared], runs, out_dir)
        except LaunchError:
            for run in runs:
                shutil.rmtree(run.path, ignore_errors=True)
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        record["runs"] = [{"run": str(run.path), "point": p.points[i]} for i, run in enumerate(runs)]
        atomic_write_text(folder / f"{sweep_id}.json", json.dumps(record, indent=1))
    for i, cfg in enumerate([] if p.array else p.configs):
        run = start_run(cfg, runs_dir, job_file, sweep=sweep_id, point=p.points[i])
        runs.append(run)
        record["runs"].append({"run": str(run.path), "point": p.points[i]})
        atomic_write_text(folder / f"{sweep_id}.json", json.dumps(record, indent=1))
        if p.backend == "local":  # one after another: this machine runs one at a time
            report(i, run, wait(run))
    results = []
    for i, run in enumerate(runs):
        info = wait(run)
        if p.backend != "local":
            report(i, run, info)
        results.append((p.points[i], run, info))
    table = write_results(p, results, folder / f"{sweep_id}.csv")
    say(f"table: {table}")
    return 0 if all(info.state == State.COMPLETED for _, _, info in results) else 1


def write_results(p: Plan, results: list[tuple[dict[str, Any], RunDir, RunStatus]], table: Path) -> Path:
    """Rank the runs by the metric, print the table and write it as CSV (with every other metric)."""
    sign = -1 if p.mode == "max" else 1
    results = sorted(results, key=lambda r: (r[2].metrics.get(p.metric) is None, sign * r[2].metrics.get(p.metric, 0.0)))
    keys = list(p.points[0])
    others = sorted({m for _, _, info in results for m in info.metrics} - {p.metric})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["rank", *keys, p.metric, "state", "run", *others])
    rows = [("#", *keys, p.metric, "STATE", "RUN")]
    for n, (point, run, info) in enumerate(results, 1):
        value = info.metrics.get(p.metric)
        writer.writerow([n, *[point[k] for k in keys], "" if value is None else value, info.state, str(run.path),
                         *[info.metrics.get(m, "") for m in others]])
        rows.append((str(n), *[str(point[k]) for k in keys], "-" if value is None else f"{value:.4g}", info.state,
                     run.run_id))
    atomic_write_text(table, buffer.getvalue())
    print(format_table(rows))
    return table


def say(text: str) -> None:
    print(text, file=sys.stderr)
