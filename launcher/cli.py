"""`launch`: parse arguments, call the other modules, print. Never imports torch or Lightning."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from launcher import backends, config, sweep
from launcher.cli_args import build_parser
from launcher.config import JobConfig
from launcher.errors import LaunchError
from launcher.events import Exported, Predicted, Tuned
from launcher.ledger import ledger
from launcher.lifecycle import RunStatus, State, last_event
from launcher.report import status_report
from launcher.rundir import RunDir, atomic_write_text, find_run, list_runs
from launcher.slurm_env import current_allocation
from launcher.submission import (
    log_path,
    render_preview,
    render_script,
    resolve_submission,
    resume_stopped,
    runs_dir_for,
    start_run,
)
from launcher.table import format_table

SMOKE_OVERRIDES = (
    "trainer.max_epochs=1",
    "trainer.max_steps=-1",
    "trainer.limit_train_batches=4",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.num_sanity_val_steps=1",
)
TOOL_MODULES = {"tune": "launcher.tools.tune", "predict": "launcher.tools.predict",
                "export": "launcher.tools.export"}


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
        script_args=getattr(args, "script_args", None),
    )


def _job_file_only(cfg: JobConfig, command: str) -> None:
    """tune and predict build the job's model and data themselves."""
    if cfg.job.script:
        raise LaunchError(f"launch {command} takes a job file naming [model] and [data]; {cfg.job.script} is a script "
                          "(launch submit runs it; docs/scripts.md)")


def _runs_dir(args: argparse.Namespace, cfg: JobConfig | None = None) -> Path:
    return runs_dir_for(args.runs_dir, cfg)


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


def _follow(run: RunDir, path: Path | None, out: TextIO) -> RunStatus:
    """Stream the run's console (or `path`) until the run ends; return its final status."""
    backend = backends.for_run(run)
    pos = 0
    while True:
        current = path or backend.logs(run)
        pos = _pump(current, pos, out)
        if backends.status(run).over:
            for _ in range(50):  # the last lines are printed after the end is recorded
                if not backend.still_running(run):
                    break
                time.sleep(0.1)
            time.sleep(0.2)
            _pump(current, pos, out)
            return backends.status(run)
        time.sleep(0.25)


def _follow_or_detach(run: RunDir, path: Path | None) -> RunStatus | None:
    try:
        return _follow(run, path, sys.stdout)
    except KeyboardInterrupt:
        print(f"\ndetached; the run goes on. Stop it with: launch cancel {run.path}", file=sys.stderr)
        return None


def _exit_code(final: RunStatus | None) -> int:
    """--follow: 0 if the run completed, 130 if the user detached, else 1."""
    return 130 if final is None else (0 if final.state == State.COMPLETED else 1)


# --------------------------------------------------------------------------- commands


def cmd_submit(args: argparse.Namespace, extra: tuple[str, ...] = ()) -> int:
    alloc = current_allocation() if getattr(args, "here", False) else None
    if getattr(args, "here", False):
        if alloc is None:
            raise LaunchError("--here runs inside a SLURM allocation (salloc, or srun --pty bash): SLURM_JOB_ID is not set")
        if getattr(args, "after", None):
            raise LaunchError("--here starts the run now, in this allocation: --after cannot hold it (submit without --here)")
        args.nodes = args.nodes or alloc.nodes  # the whole allocation unless asked otherwise
    cfg, runs_dir, afters = resolve_submission(_request(args, extra), args.runs_dir, getattr(args, "after", None) or [],
                                               alloc)
    if args.dry_run:
        print(render_preview(cfg, runs_dir, args.job), end="")
        print((runs_dir / cfg.job.name / "RUN-ID").resolve())
        return 0
    run = start_run(cfg, runs_dir, args.job, here=alloc.job_id if alloc else None,
                    **({"after": [a.record() for a in afters]} if afters else {}))
    shape = f"{cfg.resources.nodes} node(s) x {cfg.procs_per_node} " + ("GPU(s)" if cfg.uses_gpus else "CPU process(es)")
    print(f"submitted {cfg.job.name} run {run.run_id} ({shape}, profile '{cfg.run.profile}')", file=sys.stderr)
    code = 0
    if args.follow:
        final = _follow_or_detach(run, None)
        code = _exit_code(final)
        if final is not None:
            print(f"run {final.state}" + (f": {final.error}" if final.error else ""), file=sys.stderr)
    print(run.path)
    return code


def cmd_render(args: argparse.Namespace) -> int:
    if (Path(args.job) / "config.toml").is_file():  # an existing run: what it was submitted with
        print(render_script(config.load_resolved(Path(args.job) / "config.toml")), end="")
        return 0
    cfg = config.resolve(_request(args))
    print(render_preview(cfg, _runs_dir(args, cfg), args.job), end="")
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
    rows = [("RUN", "JOB", "STATE", "STEP", "EPOCH", "RESTARTS", "GOODPUT", "SUBMITTED")]
    now = time.time()
    for run, info in zip(runs, backends.statuses(runs), strict=True):
        book = ledger(run.history(), now)
        good = f"{book.goodput:.2f}" if book and book.goodput is not None else "-"
        rows.append((run.run_id, run.job_name, info.state, str(info.global_step), str(info.epoch),
                     str(info.restarts), good, str(info.submitted_at or "")))
    print(format_table(rows))
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from launcher.ui.server import serve  # Starlette and uvicorn: only this command imports them

    if not 0 <= args.port <= 65535:
        raise LaunchError(f"launch ui --port {args.port}: a port is 0 to 65535")
    try:
        serve(_runs_dir(args), args.host, args.port, args.token)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from launcher.ui import model
    from launcher.ui.page import report_page

    run = find_run(args.run, _runs_dir(args))
    out = Path(args.out) if args.out else run.path / "report.html"
    if out.is_dir():
        raise LaunchError(f"launch report --out {out}: a directory; give a file name")
    if not out.parent.is_dir():
        raise LaunchError(f"launch report --out {out}: no directory {out.parent}")
    atomic_write_text(out, report_page(f"launch · {run.job_name} / {run.run_id}", model.run_page(run)))
    print(out)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    data, lines = status_report(find_run(args.run, _runs_dir(args)))
    print(json.dumps(data, indent=1) if args.json else "\n".join(lines))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    run = find_run(args.run, _runs_dir(args))
    path = log_path(run, args.rank)
    if args.follow:
        _follow_or_detach(run, path)
    else:
        _pump(path, 0, sys.stdout)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    run = find_run(args.run, _runs_dir(args))
    note = backends.for_run(run).cancel(run)  # returns once the run has stopped
    info = backends.status(run)
    print(f"{run.run_id}: {info.state}" + (f" ({note})" if note else ""))
    return 0 if info.state == State.CANCELLED else 1


def cmd_preempt(args: argparse.Namespace) -> int:
    run = find_run(args.run, _runs_dir(args))
    cfg = config.load_resolved(run.config)
    print(f"{run.run_id}: {backends.for_run(run).signal(run, cfg.cluster.signal)}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    run = find_run(args.run, _runs_dir(args))
    before = config.load_resolved(run.config).world_size
    cfg, edited = resume_stopped(run, args.code, args.nodes, args.procs, args.gpus)
    if cfg.world_size != before:
        print(f"world size: {before} -> {cfg.world_size} ranks ({cfg.resources.nodes} node(s) x {cfg.procs_per_node}); the "
              "global batch and the sample order are kept, the weights will not be bit-identical to a run on "
              f"{before} (sums in another order)", file=sys.stderr)
    if args.code == "current":
        print(f"code: the submit directory's current code replaces the run's snapshot ({len(edited)} file(s) differ"
              + (f": {', '.join(edited[:5])}{', ...' if len(edited) > 5 else ''})" if edited else ")"), file=sys.stderr)
    print(f"resuming {cfg.job.name} run {run.run_id} from its newest checkpoint", file=sys.stderr)
    code = _exit_code(_follow_or_detach(run, None)) if args.follow else 0
    print(run.path)
    return code


def cmd_verify(args: argparse.Namespace) -> int:
    from launcher.verify import verify

    args.cluster, args.nodes = args.cluster or config.DEFAULT_PROFILE, 1
    overrides = (f"trainer.max_epochs={args.epochs}", "trainer.max_steps=-1", f"trainer.limit_train_batches={args.batches}",
                 "trainer.limit_val_batches=4", "trainer.limit_test_batches=2", "trainer.num_sanity_val_steps=0",
                 "trainer.enable_progress_bar=false", f"checkpoint.every_n_train_steps={args.every}",
                 "job.fingerprints=true", "job.preemptible=true")
    cfg = config.resolve(_request(args, overrides))
    if cfg.cluster.backend != "local":
        raise LaunchError(f"verify runs on this machine: profile {cfg.run.profile!r} is {cfg.cluster.backend}; "
                          "use a local profile (the default)")
    exact, problems = verify(cfg, _runs_dir(args, cfg) / "verify", args.job, args.preemptions, args.seed)
    if exact:
        print(f"exact: preempted {args.preemptions} time(s) and killed once, {cfg.job.name} matches its uninterrupted "
              f"run bit for bit at every step ({args.epochs * args.batches} steps x {cfg.world_size} ranks: data, RNG, "
              "learning rate, metric states, model attributes, weights, optimizer state) and in every logged row")
        return 0
    print("NOT exact: " + "\n".join(problems))
    return 1


def _tool(tool: str, args: list[str], cfg: JobConfig) -> int:
    """Run a one-device tool (launcher/tools/: tune, predict, export) in the job's interpreter and directory."""
    cmd = [cfg.run.python or sys.executable, "-m", TOOL_MODULES[tool], *args]
    return subprocess.run(cmd, cwd=cfg.run.workdir or None).returncode


def cmd_tune(args: argparse.Namespace) -> int:
    args.nodes, args.procs = 1, 1
    if args.gpus:
        args.gpus = 1
    cfg = config.resolve(_request(args))
    _job_file_only(cfg, "tune")
    # Without a GPU there is no memory limit for the batch-size finder to find: only on request.
    want_lr = args.lr or not args.batch_size
    want_batch = args.batch_size or (not args.lr and cfg.uses_gpus)
    run = RunDir.create(_runs_dir(args, cfg) / cfg.job.name, "tune")
    cfg = config.finalize(cfg, run.path, run.run_id, args.job)
    atomic_write_text(run.config, config.dumps(cfg))
    what = " and ".join(n for n, on in (("learning rate", want_lr), ("batch size", want_batch)) if on)
    print(f"tuning the {what} of {cfg.job.name} on one device; results in {run.path}", file=sys.stderr)
    flags = (["--lr"] if want_lr else []) + (["--batch-size"] if want_batch else [])
    code = _tool("tune", [str(run.path), *flags, "--max-trials", str(args.max_trials)], cfg)
    if code != 0:
        raise LaunchError(f"tuning failed (exit {code}); see the output above")
    found = Tuned.from_json(json.loads(run.tune_result.read_text()))
    tuned = run.tuned_job
    if args.out:
        shutil.copyfile(tuned, args.out)
        tuned = Path(args.out)
    shown = ", ".join(f"{key} = {value:.4g}" for key, value in (("data.init_args.batch_size", found.batch_size),
                                                                 (found.lr_key or "lr", found.lr)) if value is not None)
    print(f"found: {shown}", file=sys.stderr)
    print(f"the job with these values: {tuned}  (launch submit {tuned})", file=sys.stderr)
    print(tuned)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    run = find_run(args.run, _runs_dir(args))
    cfg = config.load_resolved(run.config)
    _job_file_only(cfg, "predict")
    code = _tool("predict", [str(run.path), args.ckpt], cfg)
    if code != 0:
        raise LaunchError(f"{run.path}: predict failed (exit {code}); see the output above")
    last = last_event(run.history(), Predicted)
    if last is None or not Path(last.output).is_file():
        raise LaunchError(f"{run.path}: predict wrote nothing")
    print(f"{last.count} predictions from {Path(last.checkpoint).name}", file=sys.stderr)
    print(last.output)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    run = find_run(args.run, _runs_dir(args))
    cfg = config.load_resolved(run.config)
    out = Path(args.out).resolve()
    code = _tool("export", [str(run.path), args.ckpt, str(out)], cfg)
    last = last_event(run.history(), Exported)
    if code != 0 or last is None or last.output != str(out):
        raise LaunchError(f"{run.path}: export failed (exit {code}); see the output above")
    print(f"{last.tensors} tensors ({last.parameters:,} values) from {Path(last.checkpoint).name}",
          file=sys.stderr)
    print(out)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    found = sweep.points(args.grid or [], args.random or [], args.count, args.seed)
    base = tuple(args.set or ())

    def resolve_point(overrides: tuple[str, ...]) -> JobConfig:
        options = [o for o in overrides if o.startswith(sweep.SCRIPT_AXIS)]
        args.set = [*base, *(o for o in overrides if o not in options)]
        cfg = config.resolve(_request(args))
        if options and not cfg.job.script:
            raise LaunchError(f"--grid/--random {options[0].split('=')[0]}: an axis over a script's arguments "
                              f"(args.NAME); {args.job} runs no script (use its keys, e.g. model.init_args.lr)")
        return sweep.with_script_options(cfg, options) if options else cfg

    p = sweep.plan(found, resolve_point, args.job, args.metric, args.mode, args.no_array)
    return sweep.run_sweep(p, _runs_dir(args, p.configs[0]), args.job)


COMMANDS = {
    "submit": cmd_submit,
    "render": cmd_render,
    "smoke": cmd_smoke,
    "runs": cmd_runs,
    "status": cmd_status,
    "ui": cmd_ui,
    "report": cmd_report,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "preempt": cmd_preempt,
    "resume": cmd_resume,
    "verify": cmd_verify,
    "tune": cmd_tune,
    "predict": cmd_predict,
    "export": cmd_export,
    "sweep": cmd_sweep,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `launch submit train.py --nodes 2 -- --lr 0.1`: what follows the first `--` is the script's
    cut = argv.index("--") if "--" in argv else len(argv)
    args = build_parser().parse_args(argv[:cut])
    args.script_args = tuple(argv[cut + 1:]) if cut < len(argv) else None
    try:
        return COMMANDS[args.command](args)
    except LaunchError as err:
        print(f"launch: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
