"""A LightningCLI config (YAML) as the job file itself: `launch submit config.yaml`.

The YAML a LightningCLI project keeps (or `main.py fit --print_config` writes) names its classes in
subclass mode (`model: {class_path, init_args}`, the same for `data`) and the Trainer's arguments
under `trainer:`. It becomes the job file it stands for, so everything else (profiles, --set,
[checkpoint], restarts, exact resume) is as for a TOML job:
- `model`, `data` -> [model], [data] (class_path required: a config of a CLI with fixed classes
  belongs to its script: `launch submit main.py -- --config config.yaml`);
- `trainer:` -> [trainer], checked like it: a key launch sets itself (devices, strategy, ...) or
  one [trainer] lacks is refused unless it holds Lightning's default (what --print_config writes);
  `trainer.callbacks` -> [[callbacks]], `trainer.logger` (classes) -> [[loggers]];
- `seed_everything` -> job.seed (an integer: a random seed could not resume exactly);
- `optimizer`, `lr_scheduler` (torch's classes) -> [optimizer], [lr_scheduler] where launch has
  them; `ckpt_path` must be null (launch resumes a run from its own checkpoints).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from launcher.config.files import read_document
from launcher.config.schema import TrainerSection
from launcher.errors import ConfigError

SUFFIXES = (".yaml", ".yml")
TOP_KEYS = ("seed_everything", "trainer", "model", "data", "optimizer", "lr_scheduler", "ckpt_path", "weights_only")

# Lightning's own defaults of the Trainer arguments [trainer] does not take (both namespaces;
# tests/test_cli_config.py checks them against Trainer's signature): dropped when a config holds them.
LIGHTNING_TRAINER_DEFAULTS: dict[str, Any] = {
    "accelerator": "auto", "strategy": "auto", "devices": "auto", "num_nodes": 1, "plugins": None,
    "default_root_dir": None, "logger": None, "callbacks": None, "min_steps": None, "max_time": None,
    "limit_predict_batches": None, "enable_checkpointing": None, "inference_mode": True,
    "use_distributed_sampler": True, "detect_anomaly": False, "barebones": False, "sync_batchnorm": False,
    "reload_dataloaders_every_n_epochs": 0, "enable_autolog_hparams": True, "model_registry": None,
}

# Lightning's older spellings of precision, as it reads them
PRECISION_ALIASES = {64: "64-true", "64": "64-true", 32: "32-true", "32": "32-true", 16: "16-mixed", "16": "16-mixed",
                     "bf16": "bf16-mixed"}

OPTIMIZERS = {"Adam": "adam", "AdamW": "adamw", "SGD": "sgd"}
# torch's defaults of the optimizer and scheduler arguments launch's sections do not take (what
# --print_config writes; tests/test_cli_config.py checks them against torch's signatures)
TORCH_DEFAULTS: dict[str, Any] = {
    "dampening": 0.0, "maximize": False, "foreach": None, "differentiable": False, "fused": None, "capturable": False,
    "amsgrad": False, "betas": [0.9, 0.999], "eps": 1e-08, "decoupled_weight_decay": False, "last_epoch": -1,
    "threshold": 0.0001, "threshold_mode": "rel", "cooldown": 0, "min_lr": 0.0,
}
# where torch's default differs from launch's [optimizer] default
OPTIMIZER_DEFAULTS = {"adamw": {"weight_decay": 0.01}}
SCHEDULERS = {  # torch's class -> (launch's name, torch's argument -> launch's key)
    "StepLR": ("step", {"step_size": "step_size", "gamma": "gamma"}),
    "CosineAnnealingLR": ("cosine", {"T_max": "t_max", "eta_min": "eta_min"}),
    "OneCycleLR": ("onecycle", {"max_lr": "max_lr", "pct_start": "pct_start"}),
    "ReduceLROnPlateau": ("plateau", {"monitor": "monitor", "mode": "mode", "factor": "factor",
                                      "patience": "patience"}),
}


def read_yaml(path: Path) -> Any:
    import yaml

    return read_document(path, "YAML", yaml.safe_load, yaml.YAMLError, mode="r")


def cli_config_job(path: Path) -> dict[str, Any]:
    """The job file (as raw TOML tables) a LightningCLI config stands for."""
    src = str(path)
    doc = read_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(src, "", "expected a LightningCLI config: a mapping with model, data and trainer")
    for key in doc:
        if key not in TOP_KEYS:
            raise ConfigError(src, str(key), f"not a LightningCLI config key launch takes ({', '.join(TOP_KEYS)}); "
                                             "launch's own settings go in --set KEY=VALUE or a TOML job file")
    job: dict[str, Any] = {"job": {"name": re.sub(r"[^A-Za-z0-9._+-]", "-", path.stem) or "config"}}
    seed = doc.get("seed_everything")
    if isinstance(seed, bool) or not isinstance(seed, (int, type(None))):
        raise ConfigError(src, "seed_everything", f"{seed!r}: an integer is expected (every rank is seeded with it; "
                                                  "a random seed could not be drawn again at a resume)")
    if seed is not None:
        job["job"]["seed"] = seed
    for section in ("model", "data"):
        if section in doc:
            job[section] = _component(doc[section], src, section, required=True)
    job.update(_trainer(doc.get("trainer"), src))
    if doc.get("optimizer") is not None:
        job["optimizer"] = _optimizer(doc["optimizer"], src)
    if doc.get("lr_scheduler") is not None:
        job["lr_scheduler"] = _scheduler(doc["lr_scheduler"], src)
    if doc.get("weights_only") is not None:
        raise ConfigError(src, "weights_only", "launch loads its own checkpoints; set it to null")
    if doc.get("ckpt_path") is not None:
        raise ConfigError(src, "ckpt_path", "launch resumes a run from its own newest checkpoint; set it to null "
                                            "(or start from weights in the model's own code)")
    return job


def _component(value: Any, src: str, key: str, required: bool = False) -> dict[str, Any]:
    """`{class_path, init_args}` (or a bare class path) -> a [model]-style table."""
    if isinstance(value, str):
        return {"class_path": value}
    if not isinstance(value, dict) or "class_path" not in value:
        if required:
            raise ConfigError(src, f"{key}.class_path", "missing: a config given as the job file names its classes "
                                                        "(class_path, init_args); a config of a LightningCLI script "
                                                        "with its own classes goes with the script (launch submit "
                                                        "main.py -- --config CONFIG.yaml)")
        raise ConfigError(src, key, "expected a class: {class_path: ..., init_args: {...}}")
    return {k: ({} if v is None and k == "init_args" else v) for k, v in value.items()}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _trainer(trainer: Any, src: str) -> dict[str, Any]:
    if trainer is None:
        return {}
    if not isinstance(trainer, dict):
        raise ConfigError(src, "trainer", "expected a mapping of the Trainer's arguments")
    ours = {f for f in TrainerSection.__dataclass_fields__}
    out: dict[str, Any] = {}
    table: dict[str, Any] = {}
    for key, value in trainer.items():
        if key == "callbacks" and value is not None:
            out["callbacks"] = [_component(c, src, f"trainer.callbacks[{i}]") for i, c in enumerate(_as_list(value))]
        elif key == "logger" and value not in (None, True):
            if value is False:
                raise ConfigError(src, "trainer.logger", "false: launch writes the run's metrics.csv and "
                                                         "tensorboard/ (logging.csv, logging.tensorboard)")
            out["loggers"] = [_component(c, src, f"trainer.logger[{i}]") for i, c in enumerate(_as_list(value))]
        elif key in ours:
            if value is not None:  # null: Lightning's default, which [trainer]'s is
                legacy = key == "precision" and isinstance(value, (int, str))
                table[key] = PRECISION_ALIASES.get(value, value) if legacy else value
        elif key in LIGHTNING_TRAINER_DEFAULTS and value == LIGHTNING_TRAINER_DEFAULTS[key]:
            continue  # what --print_config writes for an argument left alone
        elif key not in ("callbacks", "logger"):
            table[key] = value  # the [trainer] check refuses it: set by launch, or not a key it has
    if table:
        out["trainer"] = table
    return out


def _torch_class(value: Any, src: str, key: str, known: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    comp = _component(value, src, key)
    name = str(comp["class_path"]).rpartition(".")[2]
    if name not in known:
        raise ConfigError(src, f"{key}.class_path", f"{comp['class_path']!r}: launch's [{key}] has "
                                                    f"{', '.join(known)} (or leave it out: the model's "
                                                    "configure_optimizers)")
    args = {k: v for k, v in (comp.get("init_args") or {}).items() if k not in TORCH_DEFAULTS or v != TORCH_DEFAULTS[k]}
    return name, args


def _optimizer(value: Any, src: str) -> dict[str, Any]:
    name, args = _torch_class(value, src, "optimizer", OPTIMIZERS)
    return {"name": OPTIMIZERS[name], **OPTIMIZER_DEFAULTS.get(OPTIMIZERS[name], {}), **args}  # betas=...: refused


def _scheduler(value: Any, src: str) -> dict[str, Any]:
    name, args = _torch_class(value, src, "lr_scheduler", SCHEDULERS)
    launch_name, keys = SCHEDULERS[name]
    return {"name": launch_name, **{keys.get(k, k): v for k, v in args.items()}}

