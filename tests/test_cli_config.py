"""A LightningCLI config as the job file itself (`launch submit config.yaml`): what LightningCLI's
own `--print_config` writes becomes the job it stands for, key for key; the tables of Lightning's
and torch's defaults it drops are the libraries' own. (Its refusals are in the bad-input corpus,
tests/bad_inputs/jobs/*.yaml; a config preempted twice at 3 ranks in tests/test_namespaces.py.)"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from pathlib import Path

import pytest

from launcher.config import Request, resolve
from launcher.config.cli_config import LIGHTNING_TRAINER_DEFAULTS, TORCH_DEFAULTS
from tests.test_namespaces import LIT_CONFIG, write

# The TOML job a printed config below must equal (besides the job's name)
EQUIVALENT = """
[[callbacks]]
class_path = "{namespace}.callbacks.LearningRateMonitor"
init_args = {{ log_momentum = false, log_weight_decay = false }}

[optimizer]
name = "adamw"
lr = 0.05
weight_decay = 0.01

[lr_scheduler]
name = "step"
step_size = 5
"""


def printed_config(capsys, monkeypatch, namespace: str, *args: str) -> str:
    """What `python main.py fit --print_config ARGS` writes for a LightningCLI in subclass mode."""
    monkeypatch.setattr("sys.argv", ["main.py"])
    cli = importlib.import_module(f"{namespace}.cli")
    lightning = importlib.import_module(namespace)
    capsys.readouterr()
    with pytest.raises(SystemExit) as end:
        cli.LightningCLI(lightning.LightningModule, lightning.LightningDataModule, subclass_mode_model=True,
                         subclass_mode_data=True, seed_everything_default=11, args=["fit", "--print_config", *args])
    assert end.value.code in (0, None)
    return capsys.readouterr().out


@pytest.mark.parametrize(("namespace", "module"), [("lightning.pytorch", "tests.helpers.lit"),
                                                 ("pytorch_lightning", "tests.helpers.lit_pl")])
def test_what_lightning_cli_prints_is_the_job_it_stands_for(capsys, monkeypatch, tmp_path: Path, namespace: str,
                                                            module: str) -> None:
    printed = printed_config(
        capsys, monkeypatch, namespace, "--model", f"{module}.LitMLP", "--model.dropout", "0.3",
        "--data", f"{module}.LitDigits", "--trainer.max_epochs", "3", "--trainer.log_every_n_steps", "2",
        "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=LearningRateMonitor",
        "--optimizer", "AdamW", "--optimizer.lr", "0.05", "--lr_scheduler", "StepLR", "--lr_scheduler.step_size", "5")
    assert "  devices: auto\n" in printed and "  sync_batchnorm: false\n" in printed and "last_epoch: -1" in printed
    config = tmp_path / "printed.yaml"
    config.write_text(printed)
    from_yaml = resolve(Request(str(config)))
    job = write(tmp_path, "printed", extra=EQUIVALENT.format(namespace=namespace))
    job.write_text(job.read_text().replace("tests.helpers.lit.", f"{module}."))
    from_toml = resolve(Request(str(job)))
    # LightningCLI writes every argument of the classes, their defaults too
    assert from_yaml.model.init_args == {**from_toml.model.init_args, "hidden": 32, "lr": 0.01}
    assert from_yaml.data.init_args == from_toml.data.init_args
    ((callback,), (expected,)) = from_yaml.callbacks, from_toml.callbacks
    assert callback.class_path == expected.class_path
    assert callback.init_args == {**expected.init_args, "logging_interval": None}  # null: the class's default
    same = {"model": from_toml.model, "callbacks": from_toml.callbacks}
    assert dataclasses.replace(from_yaml, **same) == from_toml


def test_a_config_and_its_toml_job_are_one_job(tmp_path: Path) -> None:
    """The config the exactness test preempts is the job file its reference runs."""
    config = tmp_path / "plain.yaml"
    config.write_text(LIT_CONFIG.format(sleep=0.0))
    assert resolve(Request(str(config))) == resolve(Request(str(write(tmp_path, "plain"))))


@pytest.mark.parametrize("namespace", ["lightning.pytorch", "pytorch_lightning"])
def test_the_trainer_defaults_dropped_are_lightnings_own(namespace: str) -> None:
    trainer = importlib.import_module(namespace).Trainer
    params = inspect.signature(trainer.__init__).parameters
    assert {k: params[k].default for k in LIGHTNING_TRAINER_DEFAULTS} == LIGHTNING_TRAINER_DEFAULTS


def test_the_optimizer_and_scheduler_defaults_dropped_are_torchs_own() -> None:
    import torch

    classes = [torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.lr_scheduler.StepLR,
               torch.optim.lr_scheduler.CosineAnnealingLR, torch.optim.lr_scheduler.OneCycleLR,
               torch.optim.lr_scheduler.ReduceLROnPlateau]
    seen = {}
    for cls in classes:
        for name, param in inspect.signature(cls).parameters.items():
            if name in TORCH_DEFAULTS:
                default = list(param.default) if isinstance(param.default, tuple) else param.default
                assert default == TORCH_DEFAULTS[name], (cls.__name__, name, param.default)
                seen[name] = True
    assert set(seen) == set(TORCH_DEFAULTS)
