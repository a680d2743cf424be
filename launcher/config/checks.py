"""Every rule a resolved config must keep, refused before anything is written or submitted:
the bounds declared on the fields, then the rules that involve more than one field or the profile."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from launcher.config.components import job_components
from launcher.config.profiles import detect_local_gpus
from launcher.config.schema import JobConfig, bounds_of
from launcher.errors import ConfigError, LaunchError

if TYPE_CHECKING:
    from launcher.config.resolve import Sources


def check_bounds(cfg: JobConfig, src: Sources) -> None:
    """The bounds declared on the schema's fields: the profile's first (the job's values inherit from
    it, so a bad profile value is reported against the cluster file), then section by section."""
    sections = sorted(dataclasses.fields(cfg), key=lambda s: s.name != "cluster")
    for section in sections:
        table = getattr(cfg, section.name)
        if not dataclasses.is_dataclass(table):  # [[callbacks]], [[loggers]]: class paths, checked below
            continue
        for f in dataclasses.fields(table):
            value = getattr(table, f.name)
            for bound in bounds_of(f):
                if not bound.allowed(value):
                    key = f"{section.name}.{f.name}"
                    raise ConfigError(src.of(key), key, bound.message.format(value=value))


def validate(cfg: JobConfig, src: Sources) -> None:
    """Impossible requests are refused here, before anything is written or submitted."""
    res, prof = cfg.resources, cfg.cluster

    def err(key: str, message: str) -> ConfigError:
        return ConfigError(src.of(key), key, message)

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}", cfg.job.name):
        raise err("job.name", f"{cfg.job.name!r}: use letters, digits and . _ + - (at most 64, no spaces)")
    check_bounds(cfg, src)
    if prof.max_nodes is not None and res.nodes > prof.max_nodes:
        raise err("resources.nodes", f"{res.nodes} nodes requested; profile '{src.profile}' allows at most {prof.max_nodes}")
    assert res.gpus_per_node is not None and res.procs_per_node is not None
    have = prof.gpus_per_node
    if have == "auto" and prof.backend == "local":
        have = detect_local_gpus()
    if isinstance(have, int) and res.gpus_per_node > have:
        where = "this machine has" if prof.gpus_per_node == "auto" else f"profile '{src.profile}' nodes have"
        raise err("resources.gpus_per_node", f"{res.gpus_per_node} GPUs per node requested; {where} {have}")
    if res.cpus_per_task is not None and prof.cpus_per_node is not None \
            and res.cpus_per_task * cfg.procs_per_node > prof.cpus_per_node:
        raise err(
            "resources.cpus_per_task",
            f"{res.cpus_per_task} CPUs x {cfg.procs_per_node} tasks per node exceeds the "
            f"{prof.cpus_per_node} CPUs of a '{src.profile}' node",
        )
    _check_allocation_units(cfg, src)
    if prof.backend == "slurm" and not prof.partition:
        raise ConfigError(src.of("cluster.partition"), "cluster.partition",
                          f"profile '{src.profile}' uses SLURM and needs a partition")
    if cfg.checkpoint.save_top_k not in (0, 1, -1) and cfg.checkpoint.monitor is None:
        raise err("checkpoint.save_top_k", "keeping more than one checkpoint needs checkpoint.monitor")
    opt, sched = cfg.optimizer, cfg.lr_scheduler
    if opt.name is not None and opt.name != "sgd" and (opt.momentum or opt.nesterov):
        raise err("optimizer.momentum", f"momentum and nesterov are for sgd, not {opt.name}")
    if sched.name is not None and opt.name is None:
        raise err("lr_scheduler.name", "a scheduler from the job file needs [optimizer] name (adam, adamw or sgd)")
    if sched.name == "plateau" and not sched.monitor:
        raise err("lr_scheduler.monitor", "the plateau scheduler needs the metric it watches, e.g. 'val_loss'")
    for _, key, comp in job_components(cfg):
        if not re.fullmatch(r"[A-Za-z_][\w.]*(:[A-Za-z_]\w*)?", comp.class_path):
            raise err(f"{key}.class_path", f"{comp.class_path!r}: use a registered name or 'package.module.Class'")
    for tracker, package in (("wandb", "wandb"), ("mlflow", "mlflow")):
        # Checked where launch runs (unless the nodes use another interpreter); never imported here.
        if getattr(cfg.logging, tracker) is not None and prof.python is None and importlib.util.find_spec(package) is None:
            raise err(f"logging.{tracker}", f"needs the {package} package: pip install -e '.[{tracker}]'")
    _check_strategy(cfg, err)
    _check_script_values(cfg, src)


def _check_strategy(cfg: JobConfig, err: Callable[[str, str], ConfigError]) -> None:
    st = cfg.strategy
    if st.name == "ddp":
        for key, set_ in (("shard_modules", bool(st.shard_modules)), ("mixed_precision", st.mixed_precision != "none"),
                          ("activation_checkpointing", st.activation_checkpointing)):
            if set_:
                raise err(f"strategy.{key}", 'is for FSDP: set strategy.name = "fsdp" (or remove the key)')
        return
    for name in st.shard_modules:
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise err("strategy.shard_modules", f"{name!r}: a module class name, such as 'TransformerBlock'")
    if st.mixed_precision != "none" and not cfg.uses_gpus:
        raise err("strategy.mixed_precision", f"{st.mixed_precision!r} is for GPU runs; on CPUs use 'none'")
    if st.mixed_precision != "none" and cfg.trainer.precision != "32-true":
        raise err("trainer.precision", f"{cfg.trainer.precision!r} with FSDP: set strategy.mixed_precision instead "
                  "(and leave trainer.precision at '32-true')")
    if cfg.resources.nodes > 1 and not cfg.cluster.shared_filesystem:
        raise err("strategy.name", "fsdp on several nodes needs cluster.shared_filesystem = true: every rank writes "
                  "its shard of each checkpoint into one directory")
    if cfg.swa.swa_lrs is not None:
        raise err("swa.swa_lrs", "stochastic weight averaging keeps a full copy of the model: use it with ddp")


def _check_allocation_units(cfg: JobConfig, src: Sources) -> None:
    """Memory and time: well-formed, and within the profile's limits."""
    res, prof = cfg.resources, cfg.cluster
    asked_mem, mem_key = (res.mem, "resources.mem") if res.mem is not None else (prof.mem, "cluster.mem")
    if asked_mem is not None:
        mem = parse_mem_mb(asked_mem, src.of(mem_key), mem_key)
        if prof.mem_per_node is not None:
            limit = parse_mem_mb(prof.mem_per_node, src.of("cluster.mem_per_node"), "cluster.mem_per_node")
            if mem > limit:
                raise ConfigError(src.of(mem_key), mem_key,
                                  f"{asked_mem} per node requested; '{src.profile}' nodes have {prof.mem_per_node}")
    if prof.gpu_bind is not None and not re.fullmatch(
            r"(verbose,)?(closest|none|single:\d+|map_gpu:[0-9*,]+|mask_gpu:[0-9a-fA-Fx*,]+)", prof.gpu_bind):
        raise ConfigError(src.of("cluster.gpu_bind"), "cluster.gpu_bind",
                          f"{prof.gpu_bind!r}: use closest, none, single:N, map_gpu:LIST or mask_gpu:LIST "
                          "(optionally prefixed by verbose,)")
    if prof.max_time is not None:
        limit = parse_time_minutes(prof.max_time, src.of("cluster.max_time"), "cluster.max_time")
        if res.time is not None:
            asked = parse_time_minutes(res.time, src.of("resources.time"), "resources.time")
            if asked > limit:
                raise ConfigError(src.of("resources.time"), "resources.time",
                                  f"{res.time} requested; profile '{src.profile}' allows at most {prof.max_time}")
    elif res.time is not None:
        parse_time_minutes(res.time, src.of("resources.time"), "resources.time")
    # The preemption warning comes signal_grace_s before the time limit: not before the start.
    limit_text, limit_key = (res.time, "resources.time") if res.time is not None else (prof.max_time, "cluster.max_time")
    if prof.backend == "slurm" and limit_text is not None:
        limit_s = parse_time_seconds(limit_text, src.of(limit_key), limit_key)
        if prof.signal_grace_s >= limit_s:
            raise ConfigError(src.of("cluster.signal_grace_s"), "cluster.signal_grace_s",
                              f"{prof.signal_grace_s} s is not shorter than the time limit ({limit_key} = "
                              f"{limit_text}, {limit_s} s): the job would be told to stop as it starts; ask for more "
                              "time or a shorter grace")


def _check_script_values(cfg: JobConfig, src: Sources) -> None:
    """Values that become #SBATCH lines or shell lines: no line breaks, one option per item."""
    prof = cfg.cluster

    def err(key: str, message: str) -> ConfigError:
        return ConfigError(src.of(key), key, message)

    for key in ("partition", "account", "qos", "constraint", "max_time", "mem_per_node", "mem", "python", "runs_dir"):
        value = getattr(prof, key)
        if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise err(f"cluster.{key}", f"{value!r}: line breaks and control characters are not allowed")
    for i, extra in enumerate(prof.sbatch_extra):
        if not re.fullmatch(r"--[a-z][a-z0-9-]*(=[^\n\r]+)?", extra):
            raise err(f"cluster.sbatch_extra[{i}]",
                      f"{extra!r}: each item is one sbatch option, e.g. '--exclusive' or '--reservation=gpu'")
    for i, line in enumerate(prof.setup):
        if "\n" in line or "\r" in line:
            raise err(f"cluster.setup[{i}]", "one shell line per item (no newlines)")
    for name in prof.env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise err(f"cluster.env.{name}", "not a valid environment variable name")
    _check_containers(cfg, err)


def _check_containers(cfg: JobConfig, err: Callable[[str, str], ConfigError]) -> None:
    prof = cfg.cluster
    if prof.container_image and prof.apptainer_image:
        raise err("cluster.apptainer_image", "a profile runs one container runtime: container_image (pyxis) or "
                                             "apptainer_image, not both")
    for key, needs in (("container_mounts", "container_image"), ("container_workdir", "container_image"),
                       ("apptainer_binds", "apptainer_image")):
        if getattr(prof, key) and not getattr(prof, needs):
            raise err(f"cluster.{key}", f"is for a container: set cluster.{needs} too")
    if prof.container and prof.backend != "slurm":
        key = "cluster.container_image" if prof.container_image else "cluster.apptainer_image"
        raise err(key, "containers run on SLURM profiles (backend = \"slurm\"); the local backend runs this interpreter")
    for key in ("container_image", "container_workdir", "apptainer_image"):
        value = getattr(prof, key)
        if value is not None and (not value or any(ord(c) < 32 or ord(c) == 127 for c in value)):
            raise err(f"cluster.{key}", f"{value!r}: empty, or a line break or control character")
    for key in ("container_mounts", "apptainer_binds"):
        for i, item in enumerate(getattr(prof, key)):
            if not re.fullmatch(r"[^,\s:]+(:[^,\s:]+){0,2}", item):
                raise err(f"cluster.{key}[{i}]", f"{item!r}: one mount a item, SRC[:DST[:OPTIONS]], no commas or spaces")


def check_path(label: str, path: str) -> None:
    """Paths end up in scripts and #SBATCH lines: quoting handles anything but line breaks."""
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise LaunchError(f"{label} {path!r} contains a line break or control character; use another directory")


# --------------------------------------------------------------------------- units


def parse_time_seconds(text: str, source: str, key: str) -> int:
    """SLURM time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not m:
        raise ConfigError(source, key, f"{text!r} is not a time; use HH:MM:SS, D-HH:MM:SS or minutes")
    days, a, b, c = m.groups()
    nums = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:
        hours, minutes, seconds = (nums + [0, 0])[:3]
        total = ((int(days) * 24 + hours) * 60 + minutes) * 60 + seconds
    elif len(nums) == 1:
        total = nums[0] * 60
    elif len(nums) == 2:
        total = nums[0] * 60 + nums[1]
    else:
        total = (nums[0] * 60 + nums[1]) * 60 + nums[2]
    if total <= 0:
        raise ConfigError(source, key, f"{text!r}: time must be positive")
    return total


def parse_time_minutes(text: str, source: str, key: str) -> int:
    """The time in whole minutes, rounded up (as SLURM rounds a limit)."""
    return -(-parse_time_seconds(text, source, key) // 60)


def parse_mem_mb(text: str, source: str, key: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMGT]?)B?", text.strip().upper())
    if not m or int(m.group(1)) <= 0:
        raise ConfigError(source, key, f"{text!r} is not a memory size; use e.g. 64G or 500M")
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
    return max(1, int(int(m.group(1)) * scale))


