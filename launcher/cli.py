"""`launch`: parse arguments, call the other modules, print. Never imports torch or Lightning."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from launcher import backends, config, render
from launcher.config import JobConfig, LaunchError
from launcher.rundir import RunDir, atomic_write_text, find_run, list_runs, new_run_id

SMOKE_OVERRIDES = (
    "trainer.max_epochs=1",
    "trainer.max_steps=-1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.num_sanity_val_steps=1",
)


# --------------------------------------------------------------------------- helpers


def _request(args: argparse.Namespace, extra: tuple[str, ...] = ()) -> config.Request:
    return config.Request(
        job_file=args.job,
        cluster=getattr(args, "cluster", None),
        cluster_file=args.cluster_file,
        nodes=getattr(args, "nodes", None),
        gpus=getattr(args, "gpus", None),
        procs=getattr(args, "procs", None),
        overrides=tuple(extra) + tuple(getattr(args, "set", None) or ()),
    )


def _runs_dir(args: argparse.Namespace, cfg: JobConfig | None = None) -> Path:
    if args.runs_dir:
        return Path(args.runs_dir)
    if os.environ.get("LAUNCH_RUNS_DIR"):
        return Path(os.environ["LAUNCH_RUNS_DIR"])
    if cfg is not None and cfg.cluster.runs_dir:
        return Path(cfg.cluster.runs_dir)
    return Path("runs")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def finalize(cfg: JobConfig, run_path: Path, run_id: str, job_file: str) -> JobConfig:
    """Fill in what is only known at submission: run identity, paths, interpreter, ports."""
    config.check_path("the run directory", str(run_path))
    config.check_path("the working directory", os.getcwd())
    res = cfg.resources
    if res.cpus_per_task is None:  # share the node's CPUs evenly between its ranks
        if cfg.cluster.backend == "local":
            cpus = max(1, (os.cpu_count() or 1) // (res.nodes * cfg.procs_per_node))
        else:
            cpus = max(1, cfg.cluster.cpus_per_node // cfg.procs_per_node) if cfg.cluster.cpus_per_node else None
        res = dataclasses.replace(res, cpus_per_task=cpus)
    run = dataclasses.replace(
        cfg.run,
        id=run_id,
        dir=str(run_path),
        workdir=os.getcwd(),
        python=cfg.cluster.python or sys.executable,
        job_file=str(Path(job_file).resolve()),
        rdzv_port=_free_port() if cfg.cluster.backend == "local" else cfg.cluster.rdzv_port,
    )
    return dataclasses.replace(cfg, resources=res, run=run)


def _render(cfg: JobConfig, array: bool = False) -> str:
    return render.render_local(cfg) if cfg.cluster.backend == "local" else render.render_sbatch(cfg, array)


def _script_path(cfg: JobConfig, run: RunDir) -> Path:
    return run.command if cfg.cluster.backend == "local" else run.path / "job.sbatch"


def _pump(path: Path, pos: int, out: TextIO) -> int:
    try:
        with open(path, "rb") as fh:
            fh.seek(pos)
            chunk = fh.read()
    except FileNotFoundError:
        return pos
    if chunk:
        out.write(chunk.decode("utf-8", errors="replace"))
        out.flush()
    return pos + len(chunk)


def _over(info: dict[str, Any]) -> bool:
    """Whether a run, as `backends.describe` shows it, has ended (one way or another)."""
    return info["terminal"] or info["state"] not in ("pending", "running")


def _follow(run: RunDir, path: Path | None, out: TextIO) -> dict[str, Any]:
    """Stream the run's console (or `path`) until the run ends; return its final summary."""
    backend = backends.for_run(run)
    pos = 0
    while True:
        current = path or backend.console_path(run)
        pos = _pump(current, pos, out)
        info = backends.describe(run)
        if _over(info):
            for _ in range(50):  # the last lines are printed after the end is recorded
                if not backend.is_alive(run):
                    break
                time.sleep(0.1)
            time.sleep(0.2)
            _pump(current, pos, out)
            return backends.describe(run)
        time.sleep(0.5)


def _follow_or_detach(run: RunDir, path: Path | None) -> dict[str, Any] | None:
    try:
        return _follow(run, path, sys.stdout)
    except KeyboardInterrupt:
        print(f"\ndetached; the run goes on. Stop it with: launch cancel {run.path}", file=sys.stderr)
        return None


# --------------------------------------------------------------------------- commands


def prepare_run(cfg: JobConfig, runs_dir: Path, job_file: str, array: bool = False,
                **event_fields: Any) -> tuple[JobConfig, RunDir]:
    """Make the run directory and freeze the config and the script into it."""
    run = RunDir.create(runs_dir, cfg.job.name)
    cfg = finalize(cfg, run.path, run.run_id, job_file)
    atomic_write_text(run.config, config.dumps(cfg))
    atomic_write_text(_script_path(cfg, run), _render(cfg, array))
    run.add_event("submitted", backend=cfg.cluster.backend, profile=cfg.run.profile, world_size=cfg.world_size,
                  **event_fields)
    return cfg, run


def start_run(cfg: JobConfig, runs_dir: Path, job_file: str, **event_fields: Any) -> RunDir:
    """Prepare the run directory and hand the run to its backend."""
    cfg, run = prepare_run(cfg, runs_dir, job_file, **event_fields)
    try:
        backends.for_run(run).submit(cfg, run)
    except LaunchError:
        shutil.rmtree(run.path, ignore_errors=True)  # nothing ran: leave no half-made run behind
        raise
    return run


def cmd_submit(args: argparse.Namespace, extra: tuple[str, ...] = ()) -> int:
    cfg = config.resolve(_request(args, extra))
    runs_dir = _runs_dir(args, cfg)
    if args.dry_run:
        placeholder = (runs_dir / cfg.job.name / "RUN-ID").resolve()
        print(_render(finalize(cfg, placeholder, "RUN-ID", args.job)), end="")
        print(placeholder)
        return 0
    run = start_run(cfg, runs_dir, args.job)
    shape = f"{cfg.resources.nodes} node(s) x {cfg.procs_per_node} " + ("GPU(s)" if cfg.uses_gpus else "CPU process(es)")
    print(f"submitted {cfg.job.name} run {run.run_id} ({shape}, profile '{cfg.run.profile}')", file=sys.stderr)
    code = 0
    if args.follow:
        info = _follow_or_detach(run, None)
        if info is None:
            code = 130
        else:
            code = 0 if info["state"] == "completed" else 1
            print(f"run {info['state']}" + (f": {info['error']}" if info.get("error") else ""), file=sys.stderr)
    print(run.path)
    return code


def cmd_render(args: argparse.Namespace) -> int:
    if (Path(args.job) / "config.toml").is_file():  # an existing run: what it was submitted with
        cfg = config.load_resolved(Path(args.job) / "config.toml")
        print(_render(cfg), end="")
        return 0
    cfg = config.resolve(_request(args))
    placeholder = (_runs_dir(args, cfg) / cfg.job.name / "RUN-ID").resolve()
    print(_render(finalize(cfg, placeholder, "RUN-ID", args.job)), end="")
    return 0


def cmd_smoke(args: argparse.Namespace) -> int:
    args.cluster = config.DEFAULT_PROFILE
    args.follow, args.dry_run = True, False
    if args.gpus is None:
        args.gpus = 0
    args.procs = args.procs if args.gpus == 0 else None
    return cmd_submit(args, SMOKE_OVERRIDES)


def cmd_runs(args: argparse.Namespace) -> int:
    runs = list_runs(_runs_dir(args))
    if not runs:
        print(f"no runs under {_runs_dir(args)}")
        return 0
    rows = [("RUN", "JOB", "STATE", "STEP", "EPOCH", "RESTARTS", "SUBMITTED")]
    for run in runs:
        info = backends.describe(run)
        rows.append((run.run_id, run.job_name, info["state"], str(info["global_step"]), str(info["epoch"]),
                     str(info["restarts"]), str(info.get("submitted_at") or "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    run = find_run(args.run, _runs_dir(args))
    info = backends.describe(run)
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"run       {info['run_id']} ({info['job']})")
    print(f"state     {info['state']}")
    print(f"progress  step {info['global_step']}, epoch {info['epoch']}, restarts {info['restarts']}")
    for key, value in sorted(info["metrics"].items()):
        print(f"  {key:<14} {value:.6g}")
    if info.get("error"):
        print(f"error     {info['error']}")
    print(f"dir       {info['run_dir']}")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    run = find_run(args.run, _runs_dir(args))
    path = backends.for_run(run).console_path(run) if args.rank is None else run.rank_log(args.rank)
    if args.rank is not None and not path.exists():
        have = sorted(p.stem.removeprefix("rank-") for p in run.logs.glob("rank-*.log"))
        raise LaunchError(f"{run.path}: no log for rank {args.rank} (ranks with logs: {', '.join(have) or 'none yet'})")
    if args.follow:
        _follow_or_detach(run, path)
    else:
        _pump(path, 0, sys.stdout)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    run = find_run(args.run, _runs_dir(args))
    backend = backends.for_run(run)
    backend.cancel(run)
    deadline = time.monotonic() + 60
    while backend.is_alive(run) and time.monotonic() < deadline:
        time.sleep(0.2)
    info = backends.describe(run)
    print(f"{run.run_id}: {info['state']}")
    return 0 if info["state"] == "cancelled" else 1


def cmd_preempt(args: argparse.Namespace) -> int:
    run = find_run(args.run, _runs_dir(args))
    cfg = config.load_resolved(run.config)
    print(f"{run.run_id}: {backends.for_run(run).preempt(run, cfg.cluster.signal)}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    run = find_run(args.run, _runs_dir(args))
    backend = backends.for_run(run)
    info = backends.describe(run)
    if backend.is_alive(run):
        raise LaunchError(f"{run.path}: still {info['state']}; cancel it first or let it finish")
    if info["state"] == "completed":
        raise LaunchError(f"{run.path}: already completed")
    cfg = config.load_resolved(run.config)
    if cfg.cluster.backend == "local":  # the old rendezvous port may be taken by now
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, rdzv_port=_free_port()))
    run.add_event("resume_requested", previous_state=info["state"])
    backend.submit(cfg, run)
    print(f"resuming {cfg.job.name} run {run.run_id} from its newest checkpoint", file=sys.stderr)
    code = 0
    if args.follow:
        final = _follow_or_detach(run, None)
        code = 130 if final is None else (0 if final["state"] == "completed" else 1)
    print(run.path)
    return code


def _tool(args: list[str], cfg: JobConfig) -> int:
    """Run a one-process tool (launcher/runtime/tools.py) in the job's interpreter and directory."""
    cmd = [cfg.run.python or sys.executable, "-m", "launcher.runtime.tools", *args]
    return subprocess.run(cmd, cwd=cfg.run.workdir or None).returncode


def cmd_tune(args: argparse.Namespace) -> int:
    args.nodes, args.procs = 1, 1
    if args.gpus:
        args.gpus = 1
    cfg = config.resolve(_request(args))
    # Without a GPU there is no memory limit for the batch-size finder to find: only on request.
    want_lr = args.lr or not args.batch_size
    want_batch = args.batch_size or (not args.lr and cfg.uses_gpus)
    run = RunDir.create(_runs_dir(args, cfg) / cfg.job.name, "tune")
    cfg = finalize(cfg, run.path, run.run_id, args.job)
    atomic_write_text(run.config, config.dumps(cfg))
    what = " and ".join(n for n, on in (("learning rate", want_lr), ("batch size", want_batch)) if on)
    print(f"tuning the {what} of {cfg.job.name} on one device; results in {run.path}", file=sys.stderr)
    flags = (["--lr"] if want_lr else []) + (["--batch-size"] if want_batch else [])
    code = _tool(["tune", str(run.path), *flags, "--max-trials", str(args.max_trials)], cfg)
    if code != 0:
        raise LaunchError(f"tuning failed (exit {code}); see the output above")
    found = json.loads((run.path / "tune.json").read_text())
    tuned = run.path / "tuned.toml"
    if args.out:
        shutil.copyfile(tuned, args.out)
        tuned = Path(args.out)
    shown = ", ".join(f"{found.get('lr_key', k) if k == 'lr' else 'data.init_args.batch_size'} = {v:.4g}"
                      for k, v in found.items() if k in ("lr", "batch_size"))
    print(f"found: {shown}", file=sys.stderr)
    print(f"the job with these values: {tuned}  (launch submit {tuned})", file=sys.stderr)
    print(tuned)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    run = find_run(args.run, _runs_dir(args))
    cfg = config.load_resolved(run.config)
    code = _tool(["predict", str(run.path), args.ckpt], cfg)
    if code != 0:
        raise LaunchError(f"{run.path}: predict failed (exit {code}); see the output above")
    made = [e for e in run.read_events() if e.get("event") == "predicted"]
    if not made or not Path(made[-1]["output"]).is_file():
        raise LaunchError(f"{run.path}: predict wrote nothing")
    last = made[-1]
    print(f"{last['count']} predictions from {Path(last['checkpoint']).name}", file=sys.stderr)
    print(last["output"])
    return 0


# --------------------------------------------------------------------------- sweeps


def sweep_points(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The grid's cartesian product, or `--count` random draws (seeded)."""
    import itertools
    import math
    import random

    grid: list[tuple[str, list[Any]]] = []
    for item in args.grid or []:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise LaunchError(f"--grid {item!r}: expected KEY=V1,V2,... e.g. model.init_args.lr=0.01,0.1")
        grid.append((key, [config.parse_override(f"{key}={v}")[1] for v in values.split(",")]))
    draws: list[tuple[str, float, float, bool, bool]] = []
    for item in args.random or []:
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
        draws.append((key, low, high, len(parts) == 3, is_int))
    if draws and not args.count:
        raise LaunchError("--random needs --count N (how many points to draw)")
    points = [dict(zip([k for k, _ in grid], combo, strict=True)) for combo in itertools.product(*[v for _, v in grid])]
    if draws:
        rng = random.Random(args.seed)
        drawn = []
        for base in points or [{}]:
            for _ in range(args.count):
                point = dict(base)
                for key, low, high, log, is_int in draws:
                    if is_int:
                        point[key] = rng.randint(int(low), int(high))
                    elif log:
                        point[key] = float(f"{math.exp(rng.uniform(math.log(low), math.log(high))):.4g}")
                    else:
                        point[key] = float(f"{rng.uniform(low, high):.4g}")
                drawn.append(point)
        points = drawn
    if not points:
        raise LaunchError("a sweep needs --grid KEY=V1,V2 and/or --random KEY=LOW:HIGH --count N")
    return points


def _override(key: str, value: Any) -> str:
    import tomli_w

    return f"{key}={tomli_w.dumps({'v': value}).partition('=')[2].strip()}"


def cmd_sweep(args: argparse.Namespace) -> int:
    import csv
    import io

    points = sweep_points(args)
    base = tuple(args.set or ())
    configs = []
    for point in points:  # every point is checked before the first one runs
        args.set = list(base) + [_override(k, v) for k, v in point.items()]
        configs.append(config.resolve(_request(args)))
    first = configs[0]
    metric = args.metric or first.checkpoint.monitor or "val_loss"
    mode = args.mode or (first.checkpoint.mode if metric == first.checkpoint.monitor else "min")
    runs_dir = _runs_dir(args, first)
    sweep_id = new_run_id()
    folder = runs_dir / first.job.name / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    backend = first.cluster.backend
    # One SLURM job array when every point asks for the same allocation (a grid over, say,
    # resources.nodes cannot share one); else one job per point.
    array = backend == "slurm" and len(configs) > 1 and not args.no_array and len(
        {repr(render.array_directives_key(finalize(c, runs_dir / "X", "X", args.job))) for c in configs}) == 1
    order = {"local": "one after another"}.get(backend, "as one job array" if array else "all queued at once")
    print(f"sweep {sweep_id}: {len(points)} runs of {first.job.name} ({order}), ranked by {metric} ({mode})",
          file=sys.stderr)
    runs: list[RunDir] = []
    record = {"sweep": sweep_id, "job": args.job, "metric": metric, "mode": mode, "runs": []}

    def wait(run: RunDir) -> dict[str, Any]:
        while True:
            info = backends.describe(run)
            if _over(info):
                return info
            time.sleep(1.0)

    def report(i: int, run: RunDir, info: dict[str, Any]) -> None:
        shown = " ".join(f"{k}={v}" for k, v in points[i].items())
        value = info["metrics"].get(metric)
        print(f"[{i + 1}/{len(points)}] {shown}: {info['state']}"
              + (f", {metric} {value:.4g}" if value is not None else "") + f"  ({run.run_id})", file=sys.stderr)

    if array:
        from launcher.backends import slurm

        prepared = [prepare_run(cfg, runs_dir, args.job, array=True, sweep=sweep_id, point=points[i])
                    for i, cfg in enumerate(configs)]
        runs = [run for _, run in prepared]
        out_dir = folder / sweep_id
        out_dir.mkdir()
        try:
            record["slurm_array_job_id"] = slurm.submit_array([c for c, _ in prepared], runs, out_dir)
        except LaunchError:
            for run in runs:
                shutil.rmtree(run.path, ignore_errors=True)
            shutil.rmtree(out_dir, ignore_errors=True)
            raise
        record["runs"] = [{"run": str(run.path), "point": points[i]} for i, run in enumerate(runs)]
        atomic_write_text(folder / f"{sweep_id}.json", json.dumps(record, indent=1))
    for i, cfg in enumerate([] if array else configs):
        run = start_run(cfg, runs_dir, args.job, sweep=sweep_id, point=points[i])
        runs.append(run)
        record["runs"].append({"run": str(run.path), "point": points[i]})
        atomic_write_text(folder / f"{sweep_id}.json", json.dumps(record, indent=1))
        if backend == "local":
            report(i, run, wait(run))
    results = []
    for i, run in enumerate(runs):
        info = wait(run)
        if backend != "local":
            report(i, run, info)
        results.append((points[i], run, info))
    sign = -1 if mode == "max" else 1
    results.sort(key=lambda r: (r[2]["metrics"].get(metric) is None, sign * r[2]["metrics"].get(metric, 0.0)))
    keys = list(points[0])
    others = sorted({m for _, _, info in results for m in info["metrics"]} - {metric})
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["rank", *keys, metric, "state", "run", *others])
    rows = [("#", *keys, metric, "STATE", "RUN")]
    for n, (point, run, info) in enumerate(results, 1):
        value = info["metrics"].get(metric)
        writer.writerow([n, *[point[k] for k in keys], "" if value is None else value, info["state"], str(run.path),
                         *[info["metrics"].get(m, "") for m in others]])
        rows.append((str(n), *[str(point[k]) for k in keys], "-" if value is None else f"{value:.4g}", info["state"],
                     run.run_id))
    table = folder / f"{sweep_id}.csv"
    atomic_write_text(table, buffer.getvalue())
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"table: {table}", file=sys.stderr)
    return 0 if all(info["state"] == "completed" for _, _, info in results) else 1


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="launch", description="Run PyTorch Lightning jobs locally or on SLURM.")
    parser.add_argument("--runs-dir", help="where run directories live (default: ./runs, or the profile's runs_dir)")
    parser.add_argument("--cluster-file", help="cluster profiles (default: $LAUNCH_CLUSTER_FILE, ./cluster.toml)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def job_args(p: argparse.ArgumentParser, smoke: bool = False) -> None:
        p.add_argument("job", help="job file (TOML)")
        if not smoke:
            p.add_argument("--cluster", help="profile in cluster.toml (default: local)")
            p.add_argument("--nodes", type=int, help="nodes (local: simulated nodes on this machine)")
        p.add_argument("--gpus", type=int, help="GPUs per node (0: CPU processes)")
        p.add_argument("--procs", type=int, help="processes per node for CPU runs (default 2)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any job key, e.g. trainer.max_epochs=3")
        p.add_argument("--runs-dir", default=argparse.SUPPRESS, help="where run directories live")
        p.add_argument("--cluster-file", default=argparse.SUPPRESS, help="cluster profiles (default: ./cluster.toml)")

    p = sub.add_parser("submit", help="start a run (returns at once unless --follow)")
    job_args(p)
    p.add_argument("--follow", action="store_true", help="stream the run's output until it ends; exit 0 only if it completed")
    p.add_argument("--dry-run", action="store_true", help="validate and print what would run; start nothing")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("render", help="print exactly what submit would run (or what a run directory ran)")
    job_args(p)
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("smoke", help="a few batches of train/val/test with local torchrun")
    job_args(p, smoke=True)
    p.set_defaults(func=cmd_smoke, procs=None)

    p = sub.add_parser("tune", help="find a learning rate and/or batch size (one device); writes a tuned job file")
    job_args(p)
    p.add_argument("--lr", action="store_true", help="the learning-rate finder only (default: both)")
    p.add_argument("--batch-size", action="store_true", help="the batch-size finder only (default: both)")
    p.add_argument("--max-trials", type=int, default=6, help="batch-size doublings to try (default 6)")
    p.add_argument("--out", help="also write the tuned job file here")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("sweep", help="one run per point of a grid or random search, then a table of results")
    job_args(p)
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="values to try for KEY (repeat for a grid)")
    p.add_argument("--random", action="append", metavar="KEY=LOW:HIGH[:log]", help="draw KEY uniformly (or log-uniformly)")
    p.add_argument("--count", type=int, help="random points to draw (per grid point)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random draws")
    p.add_argument("--metric", help="rank by this final metric (default: checkpoint.monitor, else val_loss)")
    p.add_argument("--mode", choices=("min", "max"), help="better is lower or higher (default: checkpoint.mode)")
    p.add_argument("--no-array", action="store_true", help="SLURM: one job per point instead of one job array")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("runs", help="list runs")
    p.add_argument("--runs-dir", default=argparse.SUPPRESS)
    p.set_defaults(func=cmd_runs)

    for name, func, text in (("status", cmd_status, "a run's state and progress"),
                             ("logs", cmd_logs, "a run's output"),
                             ("cancel", cmd_cancel, "stop a run (it saves a checkpoint first)"),
                             ("preempt", cmd_preempt, "send the preemption signal now, as the cluster would"),
                             ("resume", cmd_resume, "continue a failed or cancelled run from its newest checkpoint"),
                             ("predict", cmd_predict, "predictions of a run's checkpoint, written to the run directory")):
        p = sub.add_parser(name, help=text)
        p.add_argument("run", help="run directory, or run id under the runs dir")
        p.add_argument("--runs-dir", default=argparse.SUPPRESS)
        if name == "status":
            p.add_argument("--json", action="store_true", help="machine-readable")
        if name == "logs":
            p.add_argument("--rank", type=int, help="that rank's full log (default: the run's console)")
        if name in ("logs", "resume"):
            p.add_argument("--follow", action="store_true", help="keep printing until the run ends")
        if name == "predict":
            p.add_argument("--ckpt", default="best", help="best (default: checkpoint.monitor's best), last, or a path")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LaunchError as err:
        print(f"launch: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
