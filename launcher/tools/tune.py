"""`launch tune`: the learning-rate and batch-size finders on one device; writes a tuned job file.

    python -m launcher.tools.tune RUN_DIR [--lr] [--batch-size] [--max-trials N]

The model and data are built exactly as the job builds them (same config, same seed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from launcher.config import JobConfig, load_resolved, read_toml
from launcher.lifecycle import Event
from launcher.rundir import RunDir, atomic_write_text
from launcher.tools import one_device_trainer
from launcher.usercode import import_user_code


def lr_key(cfg: JobConfig, model: Any) -> tuple[str, ...]:
    """Where the learning rate lives in the job file."""
    if cfg.optimizer.name is not None:
        return ("optimizer", "lr")
    if "lr" in cfg.model.init_args or hasattr(model, "lr"):
        return ("model", "init_args", "lr")
    raise SystemExit("launch tune: the model has no `lr` argument and the job has no [optimizer]: "
                     "nothing to write the learning rate into")


def set_key(table: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        table = table.setdefault(part, {})
    table[path[-1]] = value


def tune(run: RunDir, want_lr: bool, want_batch: bool, max_trials: int) -> dict[str, Any]:
    from launcher.runtime.build import build_model_and_data
    from launcher.runtime.lightning_api import module

    Tuner = module("tuner").Tuner

    cfg = load_resolved(run.config)
    model, datamodule = build_model_and_data(cfg)
    found: dict[str, Any] = {}
    if want_batch:
        if not hasattr(datamodule, "batch_size"):
            raise SystemExit("launch tune: the datamodule has no `batch_size` attribute to scale")
        trainer = one_device_trainer(cfg, run.tool_root("tune"), max_epochs=-1)
        size = Tuner(trainer).scale_batch_size(model, datamodule=datamodule, mode="power",
                                               init_val=int(datamodule.batch_size), max_trials=max_trials)
        found["batch_size"] = int(size)
        print(f"batch size finder: {size}", flush=True)
    if want_lr:
        key = lr_key(cfg, model)
        trainer = one_device_trainer(cfg, run.tool_root("tune"), max_epochs=-1)
        finder = Tuner(trainer).lr_find(model, datamodule=datamodule, update_attr=False)
        if finder is None or finder.suggestion() is None:
            raise SystemExit("launch tune: the learning-rate finder found no suggestion (too few batches?)")
        found["lr"] = float(finder.suggestion())
        figure = finder.plot(suggest=True)
        figure.savefig(run.lr_find_plot, dpi=100)
        found["lr_key"] = ".".join(key)
        print(f"learning-rate finder: {found['lr']:.3g} (plot: {run.lr_find_plot})", flush=True)
    raw = read_toml(Path(cfg.run.job_file))
    if "lr" in found:
        set_key(raw, tuple(found["lr_key"].split(".")), found["lr"])
    if "batch_size" in found:
        set_key(raw, ("data", "init_args", "batch_size"), found["batch_size"])
    import tomli_w

    atomic_write_text(run.tuned_job, f"# {cfg.run.job_file} with the values `launch tune` found\n"
                      + tomli_w.dumps(raw))
    atomic_write_text(run.tune_result, json.dumps(found, indent=1))
    run.add_event(Event.TUNED, **found)
    return found


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.tools.tune")
    parser.add_argument("run")
    parser.add_argument("--lr", action="store_true")
    parser.add_argument("--batch-size", action="store_true")
    parser.add_argument("--max-trials", type=int, default=6)
    args = parser.parse_args(argv)
    run = RunDir(Path(args.run))
    import_user_code(load_resolved(run.config), run)
    tune(run, args.lr, args.batch_size, args.max_trials)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
