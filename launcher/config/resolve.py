"""Job file + profile + flags -> one validated JobConfig; at submission, `finalize` fills the run section.

Precedence, highest first: `--set key.path=value` and CLI flags > job file > cluster profile >
defaults. Which source a key came from is remembered, so an error names the right file or flag.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import os
import re
import socket
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.config import cli_config
from launcher.config.checks import check_path, validate
from launcher.config.components import check_component, job_components, mixed_lightning_message, script_lightning
from launcher.config.files import read_toml
from launcher.config.profiles import detect_local_gpus, find_cluster_file, load_profiles
from launcher.config.schema import DEFAULT_PROFILE, JobConfig
from launcher.config.typecheck import build, check_keys
from launcher.errors import ConfigError


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
    script_args: tuple[str, ...] | None = None  # after `--`: a script's arguments (job.args)


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


@dataclass
class Sources:
    """Which file or flag each key of the merged config came from, for error messages."""

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


def resolve(req: Request) -> JobConfig:
    """Job file + profile + flags -> one validated JobConfig (run section still empty)."""
    job_path = Path(req.job_file)
    job_src = str(job_path)
    if job_path.suffix == ".py":
        job_raw = script_job(job_path)
    elif job_path.suffix in cli_config.SUFFIXES:
        job_raw = cli_config.cli_config_job(job_path)
    else:
        job_raw = read_toml(job_path)
    if req.script_args is not None:
        job_raw.setdefault("job", {})["args"] = list(req.script_args)
    check_keys(JobConfig, job_raw, job_src)
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
    check_keys(JobConfig, cli, "--set")

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
    src = Sources(job_src, cluster_src, name, job_raw, cli, flags)
    try:
        cfg = build(JobConfig, merged, "<merged>")
    except ConfigError as err:
        raise ConfigError(src.of(err.key), err.key, err.message) from None
    cfg = _fill_resources(cfg, src)
    for section in ("model", "data"):
        if getattr(cfg, section) is None and not cfg.job.script:
            raise ConfigError(job_src, section, "missing required key (table), or job.script to run a script instead")
    if cfg.job.script:
        cfg = _check_script(cfg, src)
    validate(cfg, src)
    namespaces: dict[str, str] = {}  # Lightning namespace -> the first class from it
    for section, name, comp in job_components(cfg):
        key = f"{name}.class_path"
        namespace = check_component(section, comp.class_path, src.of(key), key, comp.init_args)
        if namespace and namespaces.setdefault(namespace, f"{key} {comp.class_path} ({namespace})") and len(namespaces) > 1:
            raise ConfigError(src.of(key), key, mixed_lightning_message(*namespaces.values()))
    return cfg


def script_job(path: Path) -> dict[str, Any]:
    """`launch submit train.py`: the job file a script stands for (named after it; the rest defaults)."""
    if not path.is_file():
        raise ConfigError(str(path), "script", "no such file")
    return {"job": {"name": re.sub(r"[^A-Za-z0-9._+-]", "-", path.stem) or "script", "script": str(path)}}


def _check_script(cfg: JobConfig, src: Sources) -> JobConfig:
    """The script exists (relative to the submit directory, or absolute), and no [model]/[data]
    besides; kept relative to the submit directory when it is under it (the code snapshot's place)."""
    script = Path(cfg.job.script)
    full = script if script.is_absolute() else Path.cwd() / script
    if not full.is_file():
        raise ConfigError(src.of("job.script"), "job.script", f"{cfg.job.script!r}: no such file")
    if script.suffix != ".py":
        raise ConfigError(src.of("job.script"), "job.script", f"{cfg.job.script!r}: a Python script (.py) is expected")
    for section in ("model", "data"):
        if getattr(cfg, section) is not None:
            raise ConfigError(src.of(f"{section}.class_path"), section,
                              "a job runs either a script (job.script) or [model] and [data]; remove one")
    _, namespaces = script_lightning(full)
    if len(namespaces) > 1:
        raise ConfigError(src.of("job.script"), "job.script", mixed_lightning_message(*namespaces.values()))
    if full.resolve().is_relative_to(Path.cwd().resolve()):
        script = full.resolve().relative_to(Path.cwd().resolve())
    return dataclasses.replace(cfg, job=dataclasses.replace(cfg.job, script=script.as_posix()))


def _fill_resources(cfg: JobConfig, src: Sources) -> JobConfig:
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


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def finalize(cfg: JobConfig, run_path: Path, run_id: str, job_file: str) -> JobConfig:
    """Fill in what is only known at submission: run identity, paths, interpreter, ports."""
    check_path("the run directory", str(run_path))
    check_path("the working directory", os.getcwd())
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
        python=cfg.cluster.python or ("python" if cfg.cluster.container else sys.executable),
        launcher_python=sys.executable if cfg.cluster.container else "",
        job_file=str(Path(job_file).resolve()),
        rdzv_port=free_port() if cfg.cluster.backend == "local" else cfg.cluster.rdzv_port,
    )
    return dataclasses.replace(cfg, resources=res, run=run)
