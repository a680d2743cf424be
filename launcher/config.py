"""Typed job and cluster configuration, parsed once from TOML and validated in one place.

Precedence, highest first: `--set key.path=value` and CLI flags > job file > cluster profile >
defaults. Every user mistake raises `ConfigError`, whose message names the file, the key path and
what is allowed. This module must not import torch: the CLI's fast commands depend on it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import os
import re
import shutil
import subprocess
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

CLUSTER_FILE_ENV = "LAUNCH_CLUSTER_FILE"
DEFAULT_PROFILE = "local"


class LaunchError(Exception):
    """A user mistake: the CLI prints it as one line and exits with code 2."""


class ConfigError(LaunchError):
    def __init__(self, source: str, key: str, message: str) -> None:
        self.source, self.key, self.message = source, key, message
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + message)


# --------------------------------------------------------------------------- schema

Precision = Literal["64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"]


@dataclass(frozen=True)
class JobSection:
    name: str
    seed: int = 0
    test_after_fit: bool = True
    preemptible: bool = True  # false: no signal handling, no per-step stop agreement (benchmarks, opt-out)
    # How long a rank waits in a collective for the others before the job fails. A rank that
    # exits is noticed at once (torchrun, srun --kill-on-bad-exit); this bounds a rank that hangs.
    collective_timeout_s: int = 600


@dataclass(frozen=True)
class ComponentSection:
    """A LightningModule or LightningDataModule: registered name or import path, plus kwargs."""

    class_path: str
    init_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainerSection:
    max_epochs: int | None = None
    min_epochs: int | None = None
    max_steps: int = -1
    precision: Precision = "32-true"
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: Literal["norm", "value"] = "norm"
    limit_train_batches: int | float | None = None
    limit_val_batches: int | float | None = None
    limit_test_batches: int | float | None = None
    val_check_interval: int | float | None = None
    check_val_every_n_epoch: int | None = 1
    num_sanity_val_steps: int = 2
    log_every_n_steps: int = 50
    deterministic: bool = False
    benchmark: bool | None = None
    fast_dev_run: bool | int = False
    overfit_batches: int | float = 0.0
    enable_model_summary: bool = True
    enable_progress_bar: bool = True
    profiler: Literal["simple", "advanced", "pytorch"] | None = None  # report in the run's profiler/ folder


@dataclass(frozen=True)
class ResourcesSection:
    nodes: int = 1
    gpus_per_node: int | None = None  # None: the profile's GPUs (0 on a CPU-only machine)
    procs_per_node: int | None = None  # CPU runs only; None: 2, so DDP is exercised by default
    cpus_per_task: int | None = None
    mem: str | None = None  # per node, e.g. "64G"
    time: str | None = None  # "HH:MM:SS", "D-HH:MM:SS" or minutes


@dataclass(frozen=True)
class CheckpointSection:
    monitor: str | None = None
    mode: Literal["min", "max"] = "min"
    save_top_k: int = 1
    save_last: bool = True
    filename: str | None = None
    every_n_epochs: int | None = None
    every_n_train_steps: int | None = None


@dataclass(frozen=True)
class EarlyStoppingSection:
    monitor: str | None = None  # setting it turns early stopping on
    patience: int = 3
    min_delta: float = 0.0
    mode: Literal["min", "max"] = "min"


@dataclass(frozen=True)
class OptimizerSection:
    """Setting `name` replaces the model's own configure_optimizers."""

    name: Literal["adam", "adamw", "sgd"] | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd only
    nesterov: bool = False  # sgd only


@dataclass(frozen=True)
class SchedulerSection:
    """An LR scheduler for the [optimizer]; `name` turns it on."""

    name: Literal["step", "cosine", "onecycle", "plateau"] | None = None
    interval: Literal["step", "epoch"] = "epoch"  # onecycle always steps per batch
    step_size: int = 10  # step: every step_size intervals, lr *= gamma
    gamma: float = 0.1
    t_max: int | None = None  # cosine: intervals per cycle (default: the whole run)
    eta_min: float = 0.0  # cosine
    max_lr: float | None = None  # onecycle: peak lr (default: optimizer.lr)
    pct_start: float = 0.3  # onecycle
    monitor: str | None = None  # plateau: the metric it watches (required)
    mode: Literal["min", "max"] = "min"  # plateau
    factor: float = 0.1  # plateau
    patience: int = 10  # plateau


@dataclass(frozen=True)
class SWASection:
    """Stochastic weight averaging; setting `swa_lrs` turns it on."""

    swa_lrs: float | None = None
    swa_epoch_start: int | float = 0.8  # an epoch, or a fraction of max_epochs
    annealing_epochs: int = 10
    annealing_strategy: Literal["cos", "linear"] = "cos"


@dataclass(frozen=True)
class LoggingSection:
    tensorboard: bool = True
    csv: bool = True
    log_lr: bool = True  # the learning rate of every param group (when an optimizer is logged)
    grad_norm: bool = False  # the 2-norm of the gradients, per parameter and in total
    histograms: bool = False  # TensorBoard histograms of every parameter, each epoch
    hparams: bool = True  # the resolved config in TensorBoard's HPARAMS tab, with hp_metric
    hp_metric: str | None = None  # the metric shown as hp_metric (default: checkpoint.monitor's best, else val_loss)
    loss_curve: bool = True  # loss_curve.png in the run directory at the end


@dataclass(frozen=True)
class PerformanceSection:
    """Opt-in speed settings (see bench/README.md for what each gave)."""

    channels_last: bool = False  # convolution weights in NHWC: faster convolutions on tensor-core GPUs
    compile: bool = False  # torch.compile the model's forward, static shapes (a one-time compile cost)


@dataclass(frozen=True)
class ClusterProfile:
    backend: Literal["local", "slurm"] = "local"
    gpus_per_node: int | Literal["auto"] = "auto"
    cpus_per_node: int | None = None
    mem_per_node: str | None = None
    max_time: str | None = None
    max_nodes: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    sbatch_extra: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    shared_filesystem: bool = True
    launch_mode: Literal["srun", "torchrun"] = "srun"
    signal: Literal["USR1", "USR2", "TERM", "INT", "HUP"] = "USR1"
    signal_grace_s: int = 120
    python: str | None = None  # interpreter on the compute nodes; None: the submitting one
    runs_dir: str | None = None
    rdzv_port: int = 29400


@dataclass(frozen=True)
class RunSection:
    """Filled in at submission; frozen into the run directory with everything else."""

    id: str = ""
    dir: str = ""
    workdir: str = ""
    python: str = ""
    profile: str = DEFAULT_PROFILE
    job_file: str = ""
    rdzv_port: int = 0


@dataclass(frozen=True)
class JobConfig:
    job: JobSection
    model: ComponentSection
    data: ComponentSection
    trainer: TrainerSection = field(default_factory=TrainerSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    early_stopping: EarlyStoppingSection = field(default_factory=EarlyStoppingSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    lr_scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    swa: SWASection = field(default_factory=SWASection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    performance: PerformanceSection = field(default_factory=PerformanceSection)
    cluster: ClusterProfile = field(default_factory=ClusterProfile)
    run: RunSection = field(default_factory=RunSection)

    @property
    def uses_gpus(self) -> bool:
        return bool(self.resources.gpus_per_node)

    @property
    def procs_per_node(self) -> int:
        """Processes (ranks) per node: one per GPU, or the CPU process count."""
        if self.resources.gpus_per_node:
            return self.resources.gpus_per_node
        return self.resources.procs_per_node or 1

    @property
    def world_size(self) -> int:
        return self.resources.nodes * self.procs_per_node


# Job-file sections whose own keys are free-form (they are the user's kwargs).
FREE_FORM = {"init_args", "env"}

# --------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "table"
    if tp is type(None):
        return "unset"
    if dataclasses.is_dataclass(tp):
        return "table"
    return {int: "integer", float: "number", str: "string", bool: "true/false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    """Check `value` against type `tp`; return the typed value or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None):
                continue
            try:
                return _coerce(value, option, source, key)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(source, key, f"expected {_type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and type(value) is type(allowed[allowed.index(value)]):
            return value
        raise ConfigError(
            source, key, f"{_describe(value)} is not allowed; allowed: {', '.join(map(repr, allowed))}"
        )
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(source, key, f"expected {_type_name(tp)}, got {_describe(value)}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(v, item_tp, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a table, got {_describe(value)}")
        _, val_tp = typing.get_args(tp)
        if val_tp is Any:
            return dict(value)
        return {k: _coerce(v, val_tp, source, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a table, got {_describe(value)}")
        return _build(tp, value, source, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ConfigError(source, key, f"expected {_type_name(tp)}, got {_describe(value)}")


def _describe(value: Any) -> str:
    kind = {bool: "true/false", int: "integer", float: "number", str: "string"}.get(
        type(value), "table" if isinstance(value, dict) else "list" if isinstance(value, list) else ""
    )
    shown = repr(value) if not isinstance(value, (dict, list)) else ""
    return f"{kind} {shown}".strip()


# Trainer arguments launch sets itself, from [resources] and the profile.
OWNED_TRAINER_KEYS = {
    "devices": "set resources.gpus_per_node (--gpus) or resources.procs_per_node (--procs)",
    "num_nodes": "set resources.nodes (--nodes)",
    "accelerator": "launch uses GPUs when resources.gpus_per_node > 0, else the CPU",
    "strategy": "launch runs DDP (gloo on CPU, NCCL on GPU) with exact evaluation",
    "plugins": "launch chooses the cluster environment from how the ranks were started",
    "logger": "use the [logging] section",
    "default_root_dir": "everything goes to the run directory",
}


def _unknown_key(cls: type, name: str, source: str, key: str) -> ConfigError:
    if cls is TrainerSection and name in OWNED_TRAINER_KEYS:
        return ConfigError(source, key, f"is set by launch: {OWNED_TRAINER_KEYS[name]}")
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(source, key, f"unknown key{hint} (known: {', '.join(names)})")


def _build(cls: type, table: dict[str, Any], source: str, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in known:
            raise _unknown_key(cls, name, source, key)
        kwargs[name] = _coerce(value, hints[name], source, key)
    for name, f in known.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            key = f"{prefix}.{name}" if prefix else name
            raise ConfigError(source, key, f"missing required key ({_type_name(hints[name])})")
    return cls(**kwargs)


def _check_keys(cls: type, table: dict[str, Any], source: str, prefix: str = "") -> None:
    """Validate a partial table (keys and types) without requiring every required key."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in known:
            raise _unknown_key(cls, name, source, key)
        tp = hints[name]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            _check_keys(tp, value, source, key)
        else:
            _coerce(value, tp, source, key)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise LaunchError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise LaunchError(f"{path}: is a directory, expected a TOML file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(path), "", f"invalid TOML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "", "invalid TOML: not UTF-8 text") from None


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """`trainer.max_epochs=3` -> (["trainer", "max_epochs"], 3). Values are TOML, else strings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*", key):
        raise ConfigError("--set", text, "expected KEY.PATH=VALUE, e.g. trainer.max_epochs=3")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    if isinstance(value, (dt.date, dt.time)):
        value = raw  # 12:00:00 is a SLURM time here, not a TOML time of day
    return key.split("."), value


def _set_path(table: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        nxt = table.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError("--set", ".".join(path), f"'{part}' is not a table")
        table = nxt
    table[path[-1]] = value


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------- units


def parse_time_minutes(text: str, source: str, key: str) -> int:
    """SLURM time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise ConfigError(source, key, f"{text!r} is not a time; use HH:MM:SS, D-HH:MM:SS or minutes")
    days, a, b, c = m.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:
        hours, minutes, seconds = (nums + [0, 0])[:3]
        total = int(days) * 1440 + hours * 60 + minutes + (seconds > 0)
    elif len(nums) == 1:
        total = nums[0]
    elif len(nums) == 2:
        total = nums[0] + (nums[1] > 0)
    else:
        total = nums[0] * 60 + nums[1] + (nums[2] > 0)
    if total <= 0:
        raise ConfigError(source, key, f"{text!r}: time must be positive")
    return total


def parse_mem_mb(text: str, source: str, key: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)B?", text.strip().upper())
    if not m or int(m.group(1)) <= 0:
        raise ConfigError(source, key, f"{text!r} is not a memory size; use e.g. 64G or 500M")
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
    return max(1, int(int(m.group(1)) * scale))


# --------------------------------------------------------------------------- profiles

EMBEDDED_PROFILES: dict[str, dict[str, Any]] = {
    DEFAULT_PROFILE: {"backend": "local", "gpus_per_node": "auto", "shared_filesystem": True},
}


def find_cluster_file(explicit: str | None = None) -> Path | None:
    """--cluster-file, then $LAUNCH_CLUSTER_FILE, then ./cluster.toml; None: embedded only."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CLUSTER_FILE_ENV):
        return Path(os.environ[CLUSTER_FILE_ENV])
    candidate = Path("cluster.toml")
    return candidate if candidate.is_file() else None


def load_profiles(path: Path | None) -> tuple[dict[str, dict[str, Any]], str]:
    """Raw, key-checked profile tables by name, and the file they came from."""
    profiles = {name: dict(table) for name, table in EMBEDDED_PROFILES.items()}
    if path is None:
        return profiles, "<embedded profiles>"
    data = read_toml(path)
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(str(path), name, "expected a [profile] table; each top-level table is a profile")
        _check_keys(ClusterProfile, table, str(path), name)
        profiles[name] = dict(table)
    return profiles, str(path)


def detect_local_gpus() -> int:
    """GPUs on this machine, without importing torch (the CLI must start fast)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


# --------------------------------------------------------------------------- resolving


@dataclass(frozen=True)
class Request:
    """What the user asked for on the command line."""

    job_file: str
    cluster: str | None = None
    cluster_file: str | None = None
    nodes: int | None = None
    gpus: int | None = None
    procs: int | None = None
    overrides: tuple[str, ...] = ()


def resolve(req: Request) -> JobConfig:
    """Job file + profile + flags -> one validated JobConfig (run section still empty)."""
    job_path = Path(req.job_file)
    job_src = str(job_path)
    job_raw = read_toml(job_path)
    _check_keys(JobConfig, job_raw, job_src)
    if "run" in job_raw:
        raise ConfigError(job_src, "run", "is filled in by launch at submission; remove it")

    cli: dict[str, Any] = {}
    for text in req.overrides:
        path, value = parse_override(text)
        _set_path(cli, path, value)
    flag_values = {"nodes": (req.nodes, "--nodes"), "gpus_per_node": (req.gpus, "--gpus"),
                   "procs_per_node": (req.procs, "--procs")}
    flags = {}
    for name, (value, flag) in flag_values.items():
        if value is not None:
            cli.setdefault("resources", {})[name] = value
            flags[f"resources.{name}"] = flag
    _check_keys(JobConfig, cli, "--set")

    cluster_path = find_cluster_file(req.cluster_file)
    profiles, cluster_src = load_profiles(cluster_path)
    name = req.cluster or DEFAULT_PROFILE
    if name not in profiles:
        close = difflib.get_close_matches(name, list(profiles), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(cluster_src, name, f"no such profile{hint} (profiles: {', '.join(profiles)})")

    merged = _merge({"cluster": profiles[name]}, job_raw)
    merged = _merge(merged, cli)
    merged.setdefault("run", {})["profile"] = name
    # Which source a key came from, for error messages after merging.
    src = _Sources(job_src, cluster_src, name, job_raw, cli, flags)
    try:
        cfg = _build(JobConfig, merged, "<merged>")
    except ConfigError as err:
        raise ConfigError(src.of(err.key), err.key, err.message) from None
    cfg = _fill_resources(cfg, src)
    validate(cfg, src)
    for section in ("model", "data"):
        check_component(section, getattr(cfg, section).class_path, src.of(f"{section}.class_path"))
    return cfg


@dataclass
class _Sources:
    job: str
    cluster: str
    profile: str
    job_raw: dict[str, Any]
    cli: dict[str, Any]
    flags: dict[str, str] = field(default_factory=dict)  # key -> the command-line flag that set it

    def of(self, key: str) -> str:
        if key in self.flags:
            return self.flags[key]
        parts = key.split(".")
        for raw, name in ((self.cli, "--set"), (self.job_raw, self.job)):
            node: Any = raw
            for part in parts:
                if not isinstance(node, dict) or part.split("[")[0] not in node:
                    break
                node = node[part.split("[")[0]]
            else:
                return name
        if parts[0] == "cluster":
            return f"{self.cluster} [{self.profile}]"
        return self.job


def _fill_resources(cfg: JobConfig, src: _Sources) -> JobConfig:
    res, prof = cfg.resources, cfg.cluster
    gpus = res.gpus_per_node
    if gpus is None:
        gpus = detect_local_gpus() if prof.gpus_per_node == "auto" else prof.gpus_per_node
    procs = res.procs_per_node
    if gpus:
        if procs is not None and procs != gpus:
            raise ConfigError(
                src.of("resources.procs_per_node"),
                "resources.procs_per_node",
                f"{procs} processes with {gpus} GPUs per node: GPU runs use one process per GPU; "
                "drop --procs or use --gpus 0 for a CPU run",
            )
        procs = gpus
    elif procs is None:
        procs = 2
    return dataclasses.replace(cfg, resources=dataclasses.replace(res, gpus_per_node=gpus, procs_per_node=procs))


def validate(cfg: JobConfig, src: _Sources) -> None:
    """Impossible requests are refused here, before anything is written or submitted."""
    res, prof, tr = cfg.resources, cfg.cluster, cfg.trainer

    def err(key: str, message: str) -> ConfigError:
        return ConfigError(src.of(key), key, message)

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}", cfg.job.name):
        raise err("job.name", f"{cfg.job.name!r}: use letters, digits and . _ + - (at most 64, no spaces)")
    if isinstance(prof.gpus_per_node, int) and prof.gpus_per_node < 0:
        raise ConfigError(src.of("cluster.gpus_per_node"), "cluster.gpus_per_node", "must be 0 or more, or 'auto'")
    if cfg.job.collective_timeout_s < 1:
        raise err("job.collective_timeout_s", f"{cfg.job.collective_timeout_s}: must be at least 1 second")
    if res.nodes < 1:
        raise err("resources.nodes", f"{res.nodes}: must be at least 1")
    if prof.max_nodes is not None and res.nodes > prof.max_nodes:
        raise err("resources.nodes", f"{res.nodes} nodes requested; profile '{src.profile}' allows at most {prof.max_nodes}")
    assert res.gpus_per_node is not None and res.procs_per_node is not None
    if res.gpus_per_node < 0:
        raise err("resources.gpus_per_node", f"{res.gpus_per_node}: must be 0 or more")
    if res.procs_per_node < 1:
        raise err("resources.procs_per_node", f"{res.procs_per_node}: must be at least 1")
    have = prof.gpus_per_node
    if have == "auto" and prof.backend == "local":
        have = detect_local_gpus()
    if isinstance(have, int) and res.gpus_per_node > have:
        where = "this machine has" if prof.gpus_per_node == "auto" else f"profile '{src.profile}' nodes have"
        raise err("resources.gpus_per_node", f"{res.gpus_per_node} GPUs per node requested; {where} {have}")
    if res.cpus_per_task is not None:
        if res.cpus_per_task < 1:
            raise err("resources.cpus_per_task", f"{res.cpus_per_task}: must be at least 1")
        if prof.cpus_per_node is not None and res.cpus_per_task * cfg.procs_per_node > prof.cpus_per_node:
            raise err(
                "resources.cpus_per_task",
                f"{res.cpus_per_task} CPUs x {cfg.procs_per_node} tasks per node exceeds the "
                f"{prof.cpus_per_node} CPUs of a '{src.profile}' node",
            )
    if res.mem is not None:
        mem = parse_mem_mb(res.mem, src.of("resources.mem"), "resources.mem")
        if prof.mem_per_node is not None:
            limit = parse_mem_mb(prof.mem_per_node, src.of("cluster.mem_per_node"), "cluster.mem_per_node")
            if mem > limit:
                raise err("resources.mem", f"{res.mem} per node requested; '{src.profile}' nodes have {prof.mem_per_node}")
    if prof.max_time is not None:
        limit = parse_time_minutes(prof.max_time, src.of("cluster.max_time"), "cluster.max_time")
        if res.time is not None:
            asked = parse_time_minutes(res.time, src.of("resources.time"), "resources.time")
            if asked > limit:
                raise err("resources.time", f"{res.time} requested; profile '{src.profile}' allows at most {prof.max_time}")
    elif res.time is not None:
        parse_time_minutes(res.time, src.of("resources.time"), "resources.time")
    if prof.signal_grace_s < 1:
        raise ConfigError(src.of("cluster.signal_grace_s"), "cluster.signal_grace_s", "must be at least 1 second")
    if prof.backend == "slurm" and not prof.partition:
        raise ConfigError(src.of("cluster.partition"), "cluster.partition",
                          f"profile '{src.profile}' uses SLURM and needs a partition")
    for key in ("max_epochs", "min_epochs", "check_val_every_n_epoch"):
        value = getattr(tr, key)
        if value is not None and value < (0 if key != "check_val_every_n_epoch" else 1):
            raise err(f"trainer.{key}", f"{value}: must not be negative")
    if tr.max_steps < -1:
        raise err("trainer.max_steps", f"{tr.max_steps}: use -1 (no limit) or a positive number")
    if tr.accumulate_grad_batches < 1:
        raise err("trainer.accumulate_grad_batches", f"{tr.accumulate_grad_batches}: must be at least 1")
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "overfit_batches"):
        value = getattr(tr, key)
        if isinstance(value, float) and not 0.0 <= value <= 1.0:
            raise err(f"trainer.{key}", f"{value}: a fraction must be between 0.0 and 1.0 (or give a batch count)")
        if isinstance(value, int) and value < 0:
            raise err(f"trainer.{key}", f"{value}: must not be negative")
    if cfg.checkpoint.save_top_k < -1:
        raise err("checkpoint.save_top_k", f"{cfg.checkpoint.save_top_k}: use -1 (all), 0 or a positive number")
    if cfg.checkpoint.save_top_k not in (0, 1, -1) and cfg.checkpoint.monitor is None:
        raise err("checkpoint.save_top_k", "keeping more than one checkpoint needs checkpoint.monitor")
    es, opt, sched, swa = cfg.early_stopping, cfg.optimizer, cfg.lr_scheduler, cfg.swa
    if es.patience < 0:
        raise err("early_stopping.patience", f"{es.patience}: must not be negative")
    if opt.lr <= 0:
        raise err("optimizer.lr", f"{opt.lr}: must be positive")
    if opt.name is not None and opt.name != "sgd" and (opt.momentum or opt.nesterov):
        raise err("optimizer.momentum", f"momentum and nesterov are for sgd, not {opt.name}")
    if sched.name is not None and opt.name is None:
        raise err("lr_scheduler.name", "a scheduler from the job file needs [optimizer] name (adam, adamw or sgd)")
    if sched.name == "plateau" and not sched.monitor:
        raise err("lr_scheduler.monitor", "the plateau scheduler needs the metric it watches, e.g. 'val_loss'")
    if sched.step_size < 1:
        raise err("lr_scheduler.step_size", f"{sched.step_size}: must be at least 1")
    if swa.swa_lrs is not None and swa.swa_lrs <= 0:
        raise err("swa.swa_lrs", f"{swa.swa_lrs}: must be positive")
    if isinstance(swa.swa_epoch_start, float) and not 0.0 < swa.swa_epoch_start < 1.0:
        raise err("swa.swa_epoch_start", f"{swa.swa_epoch_start}: a fraction must be between 0 and 1 (or give an epoch)")
    for section in ("model", "data"):
        comp: ComponentSection = getattr(cfg, section)
        if not re.fullmatch(r"[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?", comp.class_path):
            raise err(f"{section}.class_path", f"{comp.class_path!r}: use a registered name or 'package.module.Class'")
    for key in ("partition", "account", "qos", "constraint", "max_time", "mem_per_node", "python", "runs_dir"):
        value = getattr(prof, key)
        if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ConfigError(src.of(f"cluster.{key}"), f"cluster.{key}",
                              f"{value!r}: line breaks and control characters are not allowed")
    for i, extra in enumerate(prof.sbatch_extra):
        if not re.fullmatch(r"--[a-z][a-z0-9-]*(=[^\n\r]+)?", extra):
            raise ConfigError(src.of(f"cluster.sbatch_extra[{i}]"), f"cluster.sbatch_extra[{i}]",
                              f"{extra!r}: each item is one sbatch option, e.g. '--exclusive' or '--reservation=gpu'")
    for i, line in enumerate(prof.setup):
        if "\n" in line or "\r" in line:
            raise ConfigError(src.of(f"cluster.setup[{i}]"), f"cluster.setup[{i}]", "one shell line per item (no newlines)")
    for name in cfg.cluster.env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(src.of(f"cluster.env.{name}"), f"cluster.env.{name}", "not a valid environment variable name")


def check_path(label: str, path: str) -> None:
    """Paths end up in scripts and #SBATCH lines: quoting handles anything but line breaks."""
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise LaunchError(f"{label} {path!r} contains a line break or control character; use another directory")


# --------------------------------------------------------------------------- components

# Registered short names for the examples that ship with launch; anything else is an import path.
REGISTRY: dict[str, dict[str, str]] = {
    "model": {
        "mlp": "models.mlp:MLP",
        "cnn": "models.cnn:SmallCNN",
        "resnet18": "models.resnet:ResNet18",
    },
    "data": {
        "digits": "datamodules.digits:DigitsDataModule",
        "mnist": "datamodules.mnist:MNISTDataModule",
        "cifar10": "datamodules.cifar10:CIFAR10DataModule",
    },
}


def split_class_path(section: str, class_path: str) -> tuple[str, str]:
    """'mlp' or 'models.mlp.MLP' or 'models.mlp:MLP' -> ('models.mlp', 'MLP')."""
    class_path = REGISTRY[section].get(class_path, class_path)
    if ":" in class_path:
        module, _, name = class_path.partition(":")
    else:
        module, _, name = class_path.rpartition(".")
    return module, name


def check_component(section: str, class_path: str, source: str) -> None:
    """Refuse a class path whose module or class does not exist, without importing torch.

    The module's source is parsed, not executed; classes made at import time are not seen, so
    those pass here and are checked again when the job imports them.
    """
    import ast
    import importlib.util
    import sys

    key = f"{section}.class_path"
    module, name = split_class_path(section, class_path)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as in the job, where the submit directory is importable
    registered = ", ".join(REGISTRY[section])
    if not module:
        raise ConfigError(source, key, f"{class_path!r} is neither a registered name ({registered}) nor 'module.Class'")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as err:
        raise ConfigError(source, key, f"cannot import {module!r}: {err}") from None
    if spec is None:
        raise ConfigError(source, key, f"no module named {module!r} (registered names: {registered})")
    if not spec.origin or not spec.origin.endswith(".py"):
        return
    try:
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"), filename=spec.origin)
    except SyntaxError as exc:
        raise ConfigError(source, key, f"{spec.origin}, line {exc.lineno}: SyntaxError: {exc.msg}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(source, key, f"cannot read {spec.origin}: {exc}") from None
    defined = {
        n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))
    } | {
        t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
    } | {
        (a.asname or a.name) for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names
    }
    if name not in defined:
        close = difflib.get_close_matches(name, sorted(defined), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(source, key, f"module {module!r} has no class {name!r}{hint}")


# --------------------------------------------------------------------------- (de)serialisation


def to_dict(cfg: JobConfig) -> dict[str, Any]:
    """A TOML-ready dict: None values are left out (they are the defaults)."""

    def clean(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if v is not None}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return obj

    return clean(dataclasses.asdict(cfg))


def dumps(cfg: JobConfig) -> str:
    import tomli_w

    return tomli_w.dumps(to_dict(cfg))


def load_resolved(path: Path) -> JobConfig:
    """Read a run directory's frozen `config.toml` (already validated at submission)."""
    return _build(JobConfig, read_toml(path), str(path))
