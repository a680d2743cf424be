"""The run directory: one folder per run holds everything a run produced and needs to resume.

Files that matter are written atomically (temp file, fsync, rename); `events.jsonl` is appended
one whole line per write, and a torn last line is ignored when reading.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import os
import secrets
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from launcher.errors import LaunchError
from launcher.events import EventRecord, typed
from launcher.records import Heartbeat


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[IO[bytes]]:
    """Write through a temp file beside `path`; on success fsync and rename it into place.

    Readers see either the previous content or the complete new one, never a mix: a crash or a
    kill at any point leaves the previous file untouched (and at worst a stray temp file).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_view(path: Path, data: bytes) -> None:
    """Atomically replace a view rewritten every few moments (progress.json, heartbeats): readers
    see the old or the new content, never a mix. Lean on purpose (the progress writer runs
    once a training step): no fsync (only an OS crash could lose the newest write, which the next
    one replaces anyway; on a shared filesystem each fsync is a round trip to the metadata
    server), and no Python file object."""
    tmp = f"{path.parent}/.{path.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


# A checkpoint is a file (DDP: written whole, atomically) or a directory of shards (FSDP), which
# counts only once this file, written last, is in it (runtime/fsdp.py).
CHECKPOINT_MARKER = "complete.json"
SHARDED_META = "meta.pt"  # its non-tensor part (Lightning's name): loops, callbacks, launch's per-rank state


def sharded_meta(path: Path) -> Path:
    return path / SHARDED_META


def checkpoint_complete(path: Path) -> bool:
    return path.is_file() or (path / CHECKPOINT_MARKER).is_file()


def checkpoint_mtime_ns(path: Path) -> int:
    return (path / CHECKPOINT_MARKER if path.is_dir() else path).stat().st_mtime_ns


def checkpoint_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def remove_checkpoint(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).astimezone().isoformat(timespec="seconds")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


@dataclass(frozen=True)
class RunDir:
    """One run's directory. Every file name of it is spelled here (see README "The run directory")."""

    path: Path

    # Names that also appear in rendered scripts (render builds those as text, for any directory).
    SUBMITIT = "submitit"
    BATCH_SCRIPT = "job.sbatch"
    PREEMPT_CKPT = "preempt.ckpt"
    PERIODIC_CKPT = "resume.ckpt"  # launch's periodic full-state checkpoint (every N steps or minutes)
    LAST_CKPT = "last.ckpt"

    # -- what launch writes
    @property
    def config(self) -> Path:
        return self.path / "config.toml"

    @property
    def command(self) -> Path:
        """Local runs: the commands, as a script a person can read and rerun."""
        return self.path / "command.txt"

    @property
    def batch_script(self) -> Path:
        """SLURM runs: the batch script submitted."""
        return self.path / self.BATCH_SCRIPT

    def script(self, backend: str) -> Path:
        return self.command if backend == "local" else self.batch_script

    @property
    def plan(self) -> Path:
        return self.path / "plan.json"

    @property
    def fingerprints(self) -> Path:
        """job.fingerprints: each rank's per-batch state digests (launch verify)."""
        return self.path / "fingerprints"

    @property
    def code(self) -> Path:
        """The user's code as submitted (launcher/code_snapshot.py): what every attempt imports."""
        return self.path / "code"

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    @property
    def progress(self) -> Path:
        return self.path / "progress.json"

    @property
    def console(self) -> Path:
        return self.path / "console.log"

    @property
    def supervisor_pid(self) -> Path:
        return self.path / "supervisor.pid"

    @property
    def slurm_record(self) -> Path:
        """SLURM runs: the job id (and the array's, for a sweep task)."""
        return self.path / "slurm.json"

    def slurm_requeue_claim(self, job_id: str, restarts: int) -> Path:
        return self.path / f".slurm-requeue-{job_id}-{restarts}"  # who records SLURM's requeue (entry/requeue.py)

    @property
    def submitit(self) -> Path:
        return self.path / self.SUBMITIT

    def task_log(self, job_id: str, task: int | str = 0) -> Path:
        """SLURM runs: one task's output, named as submitit names it."""
        return self.submitit / f"{job_id}_{task}_log.out"

    # -- what the ranks write
    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def rank_log(self, rank: int) -> Path:
        return self.logs / f"rank-{rank}.log"

    @property
    def errors(self) -> Path:
        return self.path / "errors"

    def error_record(self, rank: int) -> Path:
        return self.errors / f"rank-{rank}.json"

    def alive_marker(self, rank: int) -> Path:
        return self.errors / f"rank-{rank}.alive"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / self.LAST_CKPT

    @property
    def preempt_checkpoint(self) -> Path:
        return self.checkpoints / self.PREEMPT_CKPT

    @property
    def periodic_checkpoint(self) -> Path:
        return self.checkpoints / self.PERIODIC_CKPT

    def full_state_checkpoints(self) -> list[Path]:
        """launch's own mid-epoch checkpoints, which resume bit for bit: preemption, periodic. A
        sharded one is also looked for where it is kept for the instant of its replacement."""
        return [p for path in (self.preempt_checkpoint, self.periodic_checkpoint)
                for p in (path if path.exists() else path.parent / f".{path.name}.prev",) if checkpoint_complete(p)]

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def loss_curve(self) -> Path:
        return self.path / "loss_curve.png"

    @property
    def profiler(self) -> Path:
        return self.path / "profiler"

    @property
    def wandb(self) -> Path:
        """W&B's own files (its `dir`): wandb/offline-run-*, one folder an attempt, one W&B run."""
        return self.path / "wandb"

    @property
    def mlruns(self) -> Path:
        """The MLflow file store of a job that names no tracking_uri."""
        return self.path / "mlruns"

    def tracker_record(self, tracker: str) -> Path:
        """A tracker's (W&B, MLflow) run id and the last step it was sent, kept across attempts."""
        return self.path / "loggers" / f"{tracker}.json"

    def heartbeat(self, rank: int | None = None, node: int = 0) -> Path:
        """A node's heartbeats (node-K.json, from its leader), or a rank's own where none collects them."""
        return self.path / "heartbeats" / (f"rank-{rank}.json" if rank is not None else f"node-{node}.json")

    def read_heartbeats(self) -> list[Heartbeat]:
        """Every rank's newest heartbeat, by rank, from the node files (node-K.json, a list) and the ranks'
        own (rank-N.json), a torn one skipped: one scan and a read a node (bench/scale.py: 8,192 ranks)."""
        newest: dict[int, Heartbeat] = {}
        try:
            with os.scandir(self.path / "heartbeats") as entries:
                files = [e.path for e in entries if e.name.endswith(".json") and e.name[:5] in ("rank-", "node-")]
        except OSError:
            files = []
        for path in files:
            for beat in Heartbeat.read_list(Path(path)):
                if beat.rank not in newest or beat.beat_at > newest[beat.rank].beat_at:
                    newest[beat.rank] = beat
        return [newest[rank] for rank in sorted(newest)]

    def user_logger_dir(self, class_name: str) -> Path:
        """Where a [[loggers]] entry writes when its job file gives no save_dir."""
        return self.path / "loggers" / class_name.lower()

    # -- what the one-device tools write (launch tune, launch predict)
    def tool_root(self, tool: str) -> Path:
        """The Trainer root of `launch tune` or `launch predict` (Lightning's scratch files)."""
        return self.path / tool

    @property
    def tune_result(self) -> Path:
        return self.path / "tune.json"

    @property
    def tuned_job(self) -> Path:
        return self.path / "tuned.toml"

    @property
    def lr_find_plot(self) -> Path:
        return self.path / "lr_find.png"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions"

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def job_name(self) -> str:
        return self.path.parent.name

    # -- creation
    @classmethod
    def create(cls, runs_dir: Path, job_name: str) -> RunDir:
        """A new, unique run directory; concurrent submissions never share one."""
        parent = Path(runs_dir) / job_name
        parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            path = parent / new_run_id()
            try:
                path.mkdir()
            except FileExistsError:
                continue
            for sub in ("logs", "errors", "checkpoints"):
                (path / sub).mkdir()
            return cls(path.resolve())
        raise RuntimeError(f"could not create a unique run directory under {parent}")

    # -- events
    def add_event(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": now_iso(), "t": round(time.time(), 3), **fields}
        line = (json.dumps(record, sort_keys=False) + "\n").encode()
        fd = os.open(self.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)  # one write of one line: O_APPEND keeps concurrent writers whole
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_events(self) -> list[dict[str, Any]]:
        try:
            raw = self.events.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        events = []
        for line in raw.splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                # A torn write (a full disk cut a line short): the record appended after it
                # shares its line; keep that one, drop the torn part.
                start = line.rfind('{"event": ')
                if start > 0:
                    with contextlib.suppress(json.JSONDecodeError):
                        events.append(json.loads(line[start:]))
        return events

    def history(self) -> list[EventRecord]:
        """events.jsonl as typed records (launcher/events.py): what launch's own readers use."""
        return typed(self.read_events())

    def read_metrics(self) -> list[dict[str, str]]:
        """metrics.csv's rows as the CSV holds them (an empty cell is ""); none before the first."""
        try:
            with open(self.metrics_csv, newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh))
        except FileNotFoundError:
            return []

    def read_progress(self) -> dict[str, Any]:
        try:
            return json.loads(self.progress.read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}


def find_run(ref: str, runs_dir: Path) -> RunDir:
    """RUN is a run directory path, or a run id (or job/run-id) under the runs dir."""
    candidates = [Path(ref), Path(runs_dir) / ref]
    candidates += sorted(Path(runs_dir).glob(f"*/{ref}")) if "/" not in ref else []
    for path in candidates:
        if (path / "config.toml").is_file():
            return RunDir(path.resolve())
    raise LaunchError(f"{ref}: no such run (give a run directory, or a run id under {runs_dir})")


def list_runs(runs_dir: Path) -> list[RunDir]:
    runs = [RunDir(p.parent) for p in Path(runs_dir).glob("*/*/config.toml")]
    return sorted(runs, key=lambda r: r.run_id)
