"""One-process tools on a run directory: `launch tune` and `launch predict` run these.

    python -m launcher.runtime.tools tune RUN_DIR [--lr] [--batch-size] [--max-trials N]
    python -m launcher.runtime.tools predict RUN_DIR CKPT

Both build the model and data exactly as the job does (same config, same seed), on one device.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from launcher.config import JobConfig, load_resolved, read_toml
from launcher.rundir import RunDir, atomic_open, atomic_write_text
from launcher.runtime.job import build_model_and_data


def trainer_for(cfg: JobConfig, root: Path, **kwargs: Any) -> Any:
    import pytorch_lightning as pl
    import torch

    gpu = cfg.uses_gpus and torch.cuda.is_available()
    return pl.Trainer(accelerator="gpu" if gpu else "cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                      precision=cfg.trainer.precision, **kwargs)


# --------------------------------------------------------------------------- tune


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
    from pytorch_lightning.tuner import Tuner

    cfg = load_resolved(run.config)
    model, datamodule = build_model_and_data(cfg)
    found: dict[str, Any] = {}
    if want_batch:
        if not hasattr(datamodule, "batch_size"):
            raise SystemExit("launch tune: the datamodule has no `batch_size` attribute to scale")
        trainer = trainer_for(cfg, run.path / "tune", max_epochs=-1)
        size = Tuner(trainer).scale_batch_size(model, datamodule=datamodule, mode="power",
                                               init_val=int(datamodule.batch_size), max_trials=max_trials)
        found["batch_size"] = int(size)
        print(f"batch size finder: {size}", flush=True)
    if want_lr:
        key = lr_key(cfg, model)
        trainer = trainer_for(cfg, run.path / "tune", max_epochs=-1)
        finder = Tuner(trainer).lr_find(model, datamodule=datamodule, update_attr=False)
        if finder is None or finder.suggestion() is None:
            raise SystemExit("launch tune: the learning-rate finder found no suggestion (too few batches?)")
        found["lr"] = float(finder.suggestion())
        figure = finder.plot(suggest=True)
        figure.savefig(run.path / "lr_find.png", dpi=100)
        found["lr_key"] = ".".join(key)
        print(f"learning-rate finder: {found['lr']:.3g} (plot: {run.path / 'lr_find.png'})", flush=True)
    raw = read_toml(Path(cfg.run.job_file))
    if "lr" in found:
        set_key(raw, tuple(found["lr_key"].split(".")), found["lr"])
    if "batch_size" in found:
        set_key(raw, ("data", "init_args", "batch_size"), found["batch_size"])
    import tomli_w

    atomic_write_text(run.path / "tuned.toml", f"# {cfg.run.job_file} with the values `launch tune` found\n"
                      + tomli_w.dumps(raw))
    atomic_write_text(run.path / "tune.json", json.dumps(found, indent=1))
    run.add_event("tuned", **found)
    return found


# --------------------------------------------------------------------------- predict


def resolve_checkpoint(run: RunDir, which: str) -> Path:
    import torch

    if which not in ("best", "last"):
        path = Path(which)
        if not path.is_file():
            raise SystemExit(f"launch predict: {which}: no such checkpoint file")
        return path
    last = run.checkpoints / "last.ckpt"
    if which == "last" or not last.is_file():
        if not last.is_file():
            raise SystemExit(f"launch predict: {run.path} has no last.ckpt (did the run finish?)")
        return last
    state = torch.load(last, map_location="cpu", weights_only=False)
    for key, value in state.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and value.get("best_model_path"):
            best = Path(value["best_model_path"])
            if best.is_file():
                return best
    return last  # no monitored metric: the last checkpoint is the best there is


def predict(run: RunDir, which: str) -> Path:
    import torch
    from pytorch_lightning.utilities.model_helpers import is_overridden

    cfg = load_resolved(run.config)
    model, datamodule = build_model_and_data(cfg)
    ckpt = resolve_checkpoint(run, which)
    if not is_overridden("predict_dataloader", datamodule):
        datamodule.predict_dataloader = datamodule.test_dataloader  # the held-out data by default
    trainer = trainer_for(cfg, run.path / "predict")
    batches = trainer.predict(model, datamodule=datamodule, ckpt_path=str(ckpt), weights_only=False)
    outputs = torch.cat([b.detach().cpu() for b in batches]) if batches and torch.is_tensor(batches[0]) else batches
    out_dir = run.path / "predictions"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"{ckpt.stem}.pt"
    with atomic_open(out) as fh:
        torch.save(outputs, fh)
    if torch.is_tensor(outputs) and outputs.dim() == 2:  # class scores: also a readable CSV
        lines = ["index,prediction,score"] + [f"{i},{int(c)},{float(s):.6g}" for i, (s, c) in
                                              enumerate(zip(*outputs.softmax(-1).max(-1), strict=True))]
        atomic_write_text(out.with_suffix(".csv"), "\n".join(lines) + "\n")
    run.add_event("predicted", checkpoint=str(ckpt), output=str(out), count=len(outputs))
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher.runtime.tools")
    sub = parser.add_subparsers(dest="tool", required=True)
    t = sub.add_parser("tune")
    t.add_argument("run")
    t.add_argument("--lr", action="store_true")
    t.add_argument("--batch-size", action="store_true")
    t.add_argument("--max-trials", type=int, default=6)
    p = sub.add_parser("predict")
    p.add_argument("run")
    p.add_argument("ckpt")
    args = parser.parse_args(argv)
    run = RunDir(Path(args.run))
    cfg = load_resolved(run.config)
    if cfg.run.workdir and cfg.run.workdir not in sys.path:
        sys.path.insert(0, cfg.run.workdir)
    if args.tool == "tune":
        tune(run, args.lr, args.batch_size, args.max_trials)
    else:
        predict(run, args.ckpt)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
