"""`launch export`: one consolidated single-file checkpoint, `{"state_dict": ...}` with the model's
plain keys, that loads into the model without launch, whichever strategy wrote it.

    python -m launcher.tools.export RUN_DIR best|last|PATH OUT
"""

from __future__ import annotations

import sys
from pathlib import Path

from launcher.config import load_resolved
from launcher.lifecycle import Event
from launcher.rundir import RunDir, atomic_open
from launcher.tools.predict import resolve_checkpoint
from launcher.usercode import import_user_code


def export(run: RunDir, which: str, out: Path) -> tuple[Path, int]:
    import torch

    ckpt = resolve_checkpoint(run, which, tool="export")
    if ckpt.is_dir():
        from launcher.runtime.fsdp import read_sharded_model

        state = read_sharded_model(ckpt)
    else:
        state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    state = {key: value.detach().cpu().contiguous() for key, value in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out) as fh:
        torch.save({"state_dict": state}, fh)
    run.add_event(Event.EXPORTED, checkpoint=str(ckpt), output=str(out), tensors=len(state),
                  parameters=sum(v.numel() for v in state.values()))
    return ckpt, len(state)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m launcher.tools.export RUN_DIR best|last|PATH OUT", file=sys.stderr)
        return 2
    run = RunDir(Path(argv[0]))
    import_user_code(load_resolved(run.config), run)  # a checkpoint may pickle the job's own classes
    export(run, argv[1], Path(argv[2]).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
