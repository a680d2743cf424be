"""launch's ModelCheckpoint links last.ckpt to the top-k checkpoint of the same step where a
second save would write the same, and saves it as Lightning does everywhere else."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from launcher.runtime import lightning_compat as compat
from launcher.runtime.lightning_api import Callback, LightningModule, ModelCheckpoint, Trainer
from launcher.runtime.model_checkpoint import LaunchModelCheckpoint, link_atomically
from tests.helpers.launch import REPO
from tests.helpers.modules import last_ckpt_linked
from tests.helpers.runs import assert_same_tensors

EPOCHS = 3


class _Tiny(LightningModule):
    """Dropout in the model, shuffled data: each epoch's weights, optimizer and RNG differ."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
        self.log("loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=0.01)


class _Annotating(_Tiny):
    """A module with an on_save_checkpoint of its own (which launch cannot know to be the same twice)."""

    saves = 0

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.saves += 1
        checkpoint["saves"] = self.saves  # the top-k file and last.ckpt differ


class _LastCheckpoints(Callback):
    """After each epoch end's saves: is last.ckpt the top-k file (one inode), and what it holds."""

    def __init__(self, dirpath: Path) -> None:
        self.dirpath, self.seen = dirpath, []

    def _look(self) -> None:
        last = self.dirpath / "last.ckpt"
        if last.exists() and len(self.seen) < EPOCHS:
            self.seen.append((last_ckpt_linked(self.dirpath), torch.load(last, map_location="cpu", weights_only=False)))

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._look()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._look()


def fit(root: Path, checkpoint: type, module: type = _Tiny, *also: Callback) -> list[tuple[bool, dict[str, Any]]]:
    """3 epochs with `checkpoint` (save_last, top 1) and `also`; what last.ckpt was after each."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    looked = _LastCheckpoints(root / "checkpoints")
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=EPOCHS, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=root,
                      callbacks=[checkpoint(dirpath=root / "checkpoints", save_last=True, save_top_k=1), looked, *also])
    compat.disable_lightning_signal_handling(trainer)
    trainer.fit(module(), DataLoader(data, batch_size=8, shuffle=True))
    return looked.seen


def same_paths(obj: Any, old: str, new: str) -> Any:
    """`obj` with the directory `old` named `new` in every string (the runs' ModelCheckpoint states)."""
    if isinstance(obj, str):
        return obj.replace(old, new)
    if isinstance(obj, dict):
        return {same_paths(k, old, new): same_paths(v, old, new) for k, v in obj.items()}
    if isinstance(obj, list):
        return [same_paths(v, old, new) for v in obj]
    return obj


def test_last_ckpt_is_the_step_s_top_k_file_and_holds_what_lightning_s_second_save_wrote(tmp_path: Path) -> None:
    ours, lightning = fit(tmp_path / "ours", LaunchModelCheckpoint), fit(tmp_path / "lightning", ModelCheckpoint)
    # the first last.ckpt is written (the top-k file holds last_model_path ""), the later ones linked
    assert [linked for linked, _ in ours] == [False, True, True]
    assert [linked for linked, _ in lightning] == [False, False, False]
    for epoch, ((_, a), (_, b)) in enumerate(zip(ours, lightning, strict=True)):
        # every entry (weights, optimizer, loops, callbacks' states, the last and best paths)
        assert_same_tensors(same_paths(a, str(tmp_path / "ours"), str(tmp_path / "lightning")), b, f"epoch {epoch}")


def test_a_module_with_its_own_on_save_checkpoint_gets_a_second_save(tmp_path: Path) -> None:
    seen = fit(tmp_path, LaunchModelCheckpoint, _Annotating)
    assert [linked for linked, _ in seen] == [False, False, False]
    assert [checkpoint["saves"] for _, checkpoint in seen] == [2, 4, 6]  # top-k, then last.ckpt, each epoch


class _CountingAgreements(Callback):
    """Counts the strategy's all-reduces of a decision (ModelCheckpoint's file checks, the link's agreement)."""

    def __init__(self) -> None:
        self.calls: list[bool] = []

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        reduce = trainer.strategy.reduce_boolean_decision
        trainer.strategy.reduce_boolean_decision = lambda decision, **kw: self.calls.append(decision) or reduce(decision, **kw)


class _LoggingConstant(_Tiny):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.log("k", 1.0, on_step=False, on_epoch=True)  # a name field that reads the same every epoch
        return super().training_step(batch, batch_idx)


@pytest.mark.parametrize("last_name", ["last", "last-{k:.0f}"])
def test_last_ckpt_s_own_name_is_not_checked_with_a_collective_where_every_rank_names_it_alike(
        tmp_path: Path, last_name: str) -> None:
    class Named(LaunchModelCheckpoint):
        CHECKPOINT_NAME_LAST = last_name  # with a field: checked each time (a metric may read differently by rank)

    counting = _CountingAgreements()
    fit(tmp_path, Named, _LoggingConstant, counting)
    # each epoch end: the top-k name checked, then last.ckpt's (only at the first, with a fixed name), then the link agreed
    assert len(counting.calls) == (3 * EPOCHS - (EPOCHS - 1) if last_name == "last" else 3 * EPOCHS)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == (["epoch=2-step=12.ckpt", "last.ckpt"] if last_name == "last" else ["epoch=2-step=12.ckpt", "last-k=1.ckpt"])


def test_where_the_filesystem_makes_no_links_last_ckpt_is_saved_as_lightning_saves_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: Any) -> None:
        raise OSError(errno.EPERM, "links not supported")  # as on a filesystem without hard links

    monkeypatch.setattr(os, "link", refused)
    seen = fit(tmp_path / "ours", LaunchModelCheckpoint)
    lightning = fit(tmp_path / "lightning", ModelCheckpoint)
    assert [linked for linked, _ in seen] == [False, False, False]
    assert_same_tensors(same_paths(seen[-1][1], str(tmp_path / "ours"), str(tmp_path / "lightning")), lightning[-1][1])
    assert not list((tmp_path / "ours" / "checkpoints").glob(".*"))  # no temp file left behind


def test_a_link_replaces_the_previous_file_in_one_rename_and_refuses_what_it_cannot_link(tmp_path: Path) -> None:
    source, last = tmp_path / "epoch=1.ckpt", tmp_path / "last.ckpt"
    source.write_bytes(b"new"), last.write_bytes(b"old")
    assert link_atomically(source, last)
    assert last.read_bytes() == b"new" and last.stat().st_ino == source.stat().st_ino
    assert link_atomically(source, last)  # already that file: rename() keeps both names; no temp file stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=1.ckpt", "last.ckpt"]
    (tmp_path / "sharded").mkdir()
    assert not link_atomically(tmp_path / "sharded", last) and last.read_bytes() == b"new"
    assert not link_atomically(tmp_path / "missing.ckpt", last) and last.read_bytes() == b"new"


def test_ranks_that_differ_on_whether_a_link_holds_the_same_all_save(tmp_path: Path) -> None:
    # Rank zero alone has a callback with its own on_save_checkpoint: it must save last.ckpt, and so
    # must the others, which alone would link (a rank saving while another links waited for ever).
    out = tmp_path / "seen.json"
    run = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
                            "tests/helpers/asymmetric_saves.py", str(tmp_path / "run"), str(out)],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        output, _ = run.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)  # the ranks too
        run.communicate()
        pytest.fail("the ranks hung at the second epoch end's saves")
    assert run.returncode == 0, output[-3000:]
    assert json.loads(out.read_text()) == [[False, True], [False, True]]  # saved (not linked), with rank zero's note
