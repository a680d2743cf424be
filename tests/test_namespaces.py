"""Both Lightning namespaces: a job written with `import lightning as L` runs on a `lightning.pytorch`
Trainer with every guarantee of launch, one written with `pytorch_lightning` on that one; a job
mixing them is refused in one line, at submission where the sources say so, else at run start."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from launcher.config.components import declared_lightning
from tests.helpers.launch import run_launch
from tests.helpers.runs import LIT_SHAPE, LIT_STEPS, assert_same_training, events, preempt_at, ran_on, submit, wait_end

LIT_JOB = """
[job]
name = "{name}"
seed = 11

[model]
class_path = "tests.helpers.lit.LitMLP"
init_args = {{ dropout = 0.3, step_sleep = {sleep} }}

[data]
class_path = "{data}"
init_args = {{ {data_args} }}

[trainer]
max_epochs = 3
log_every_n_steps = 2
enable_progress_bar = false
{extra}
"""
STEPS = LIT_STEPS
# The same job as a LightningCLI config (what `--print_config` writes, shortened): the job file itself
LIT_CONFIG = """
seed_everything: 11
trainer:
  accelerator: auto
  devices: auto
  max_epochs: 3
  log_every_n_steps: 2
  enable_progress_bar: false
  precision: null
  inference_mode: true
model:
  class_path: tests.helpers.lit.LitMLP
  init_args:
    dropout: 0.3
    step_sleep: {sleep}
data:
  class_path: tests.helpers.lit.LitDigits
  init_args:
    batch_size: 32
    num_workers: 1
ckpt_path: null
"""


def write(tmp: Path, name: str, sleep: float = 0.0, data: str = "tests.helpers.lit.LitDigits",
          data_args: str = "batch_size = 32, num_workers = 1", extra: str = "") -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(LIT_JOB.format(name=name, sleep=sleep, data=data, data_args=data_args, extra=extra))
    return path


@pytest.mark.multiprocess
@pytest.mark.parametrize(("module", "namespace"), [("tests.helpers.lit", "lightning.pytorch"),
                                                   ("tests.helpers.lit_pl", "pytorch_lightning")],
                         ids=["lightning", "pytorch_lightning"])
def test_a_job_of_either_namespace_at_world_size_3_preempted_twice_mid_epoch_ends_bit_identical(
        lit_baseline, tmp_path: Path, module: str, namespace: str) -> None:
    """The user's own LightningModule and DataModule (`import lightning as L`, or their
    `pytorch_lightning` twins; a worker jittering the images, dropout, noise, a stepped schedule),
    3 ranks, stopped twice mid-epoch. Submitted as a LightningCLI config (`launch submit lit.yaml`:
    the TOML job it stands for, tests/test_cli_config.py), it trains bit for bit what the plain
    `lightning` script with the same classes, seed and data trains uninterrupted (conftest's
    lit_baseline), on its own namespace's Trainer."""
    config = tmp_path / "stopped.yaml"
    config.write_text(LIT_CONFIG.format(sleep=0.15).replace("tests.helpers.lit.", f"{module}."))
    run_dir = submit(config, tmp_path / "runs", *LIT_SHAPE)
    preempt_at(run_dir, (4, STEPS + 5))
    info = wait_end(run_dir, timeout=400)
    assert info["state"] == "completed" and info["global_step"] == 3 * STEPS, info
    stops = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert len(stops) == 2 and all(0 < e["batch_in_epoch"] < STEPS for e in stops), stops
    ran_on(run_dir, namespace)
    assert_same_training(run_dir, lit_baseline)


def test_a_job_mixing_the_namespaces_in_its_sources_is_refused_at_submission_in_one_line(tmp_path: Path) -> None:
    job = write(tmp_path, "mixed", extra='[[callbacks]]\nclass_path = "tests.helpers.modules.BatchCounter"\n')
    result = run_launch("submit", str(job), "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and not (tmp_path / "runs").exists(), result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line == (f"launch: error: {job}: callbacks[0].class_path: the job's classes come from both Lightning "
                    "namespaces: model.class_path tests.helpers.lit.LitMLP (lightning.pytorch), callbacks[0].class_path "
                    "tests.helpers.modules.BatchCounter (pytorch_lightning); no Trainer takes both: import one of "
                    "`lightning` (import lightning as L) or `pytorch_lightning` everywhere"), line


@pytest.mark.multiprocess
def test_a_mix_made_at_run_time_is_refused_by_the_rank_in_one_line(tmp_path: Path) -> None:
    """A base class made by `type()` is out of reach of the sources: the rank sees it on the class,
    before any of launch's Lightning is imported, and fails naming both classes."""
    job = write(tmp_path, "late", data="tests.helpers.lit_mixed.OldDigits", data_args="")
    info = wait_end(submit(job, tmp_path / "runs", "--procs", "1"))
    assert info["state"] == "failed" and info["global_step"] == 0, info
    assert re.fullmatch(
        r"rank 0 \(\S+\): MixedLightning: the job's classes come from both Lightning namespaces: model.class_path LitMLP "
        r"\(lightning.pytorch\), data.class_path OldDigits \(pytorch_lightning\); no Trainer takes both: .*", info["error"]), \
        info["error"]
    assert "\n" not in info["error"]


def test_the_sources_name_the_namespace_through_every_way_of_importing_it(tmp_path: Path, monkeypatch) -> None:
    """Read, never imported: aliases, `from` imports, relative imports, a base in another module of
    the project, a base in the same module; launch's own examples name none (they follow the job)."""
    pkg = tmp_path / "proj"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text("import lightning as L\n\nclass Base(L.LightningModule):\n    pass\n")
    (pkg / "lit.py").write_text(
        "from .base import Base\nimport lightning.pytorch as pl\nimport pytorch_lightning\n"
        "from pytorch_lightning import LightningDataModule as OldData\nfrom lightning import LightningDataModule\n"
        "from models.mlp import MLP\nfrom lightning.fabric import Fabric\n\n"
        "class Model(Base): pass\nclass Child(Model): pass\nclass Old(OldData): pass\n"
        "class Qualified(pytorch_lightning.callbacks.Callback): pass\nclass New(LightningDataModule): pass\n"
        "class Callback(pl.Callback): pass\nclass Ours(MLP): pass\nclass NotLightning(Fabric): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    expected = {"Model": "lightning.pytorch", "Child": "lightning.pytorch", "Old": "pytorch_lightning",
                "Qualified": "pytorch_lightning", "New": "lightning.pytorch", "Callback": "lightning.pytorch",
                "Ours": None, "NotLightning": None, "Base": "lightning.pytorch"}
    assert {name: declared_lightning("proj.lit", name) for name in expected} == expected
    assert declared_lightning("models.mlp", "MLP") is None
    assert declared_lightning("datamodules.digits", "DigitsDataModule") is None
