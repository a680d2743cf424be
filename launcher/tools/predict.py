"""`launch predict`: predictions of a run's checkpoint on one device, written to the run directory.

    python -m launcher.tools.predict RUN_DIR best|last|PATH
"""

from __future__ import annotations

import sys
from pathlib import Path

from launcher.config import load_resolved
from launcher.lifecycle import Event
from launcher.rundir import RunDir, atomic_open, atomic_write_text, checkpoint_complete, sharded_meta
from launcher.tools import one_device_trainer
from launcher.usercode import import_user_code


def resolve_checkpoint(run: RunDir, which: str, tool: str = "predict") -> Path:
    """best, last or a path: a checkpoint file, or a complete sharded checkpoint directory."""
    import torch

    if which not in ("best", "last"):
        path = Path(which)
        if not checkpoint_complete(path):
            what = "an incomplete sharded checkpoint" if path.is_dir() else "no such checkpoint"
            raise SystemExit(f"launch {tool}: {which}: {what}")
        return path
    last = run.last_checkpoint
    if which == "last" or not checkpoint_complete(last):
        if not checkpoint_complete(last):
            raise SystemExit(f"launch {tool}: {run.path} has no last.ckpt (did the run finish?)")
        return last
    state = torch.load(sharded_meta(last) if last.is_dir() else last, map_location="cpu", weights_only=False)
    for key, value in state.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and value.get("best_model_path"):
            best = Path(value["best_model_path"])
            if checkpoint_complete(best):
                return best
    return last  # no monitored metric: the last checkpoint is the best there is


def one_file(path: Path, scratch: Path) -> Path:
    """The checkpoint as one file a one-device Trainer loads: a sharded one is consolidated (model
    weights and training state, no optimizer) into `scratch`."""
    import torch

    if path.is_file():
        return path
    from launcher.runtime.fsdp import consolidate

    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / path.name
    with atomic_open(out) as fh:
        torch.save(consolidate(path), fh)
    return out


def predict(run: RunDir, which: str) -> Path:
    import torch

    from launcher.runtime.build import build_model_and_data
    from launcher.runtime.lightning_api import is_overridden

    cfg = load_resolved(run.config)
    model, datamodule = build_model_and_data(cfg)
    ckpt = resolve_checkpoint(run, which)
    if not is_overridden("predict_dataloader", datamodule):
        datamodule.predict_dataloader = datamodule.test_dataloader  # the held-out data by default
    trainer = one_device_trainer(cfg, run.tool_root("predict"))
    batches = trainer.predict(model, datamodule=datamodule, ckpt_path=str(one_file(ckpt, run.tool_root("predict"))),
                              weights_only=False)
    outputs = torch.cat([b.detach().cpu() for b in batches]) if batches and torch.is_tensor(batches[0]) else batches
    out_dir = run.predictions
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"{ckpt.stem}.pt"
    with atomic_open(out) as fh:
        torch.save(outputs, fh)
    if torch.is_tensor(outputs) and outputs.dim() == 2:  # class scores: also a readable CSV
        lines = ["index,prediction,score"] + [f"{i},{int(c)},{float(s):.6g}" for i, (s, c) in
                                              enumerate(zip(*outputs.softmax(-1).max(-1), strict=True))]
        atomic_write_text(out.with_suffix(".csv"), "\n".join(lines) + "\n")
    run.add_event(Event.PREDICTED, checkpoint=str(ckpt), output=str(out), count=len(outputs))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m launcher.tools.predict RUN_DIR best|last|PATH", file=sys.stderr)
        return 2
    run = RunDir(Path(argv[0]))
    import_user_code(load_resolved(run.config), run)
    predict(run, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
