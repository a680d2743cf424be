"""The Lightning a rank runs, and the public names of it that launch uses.

Lightning ships twice: `pytorch_lightning` (with `lightning_fabric`) and `lightning.pytorch` (with
`lightning.fabric`; what `import lightning as L` gives). The code is the same, the classes are not:
a Trainer of one refuses a LightningModule of the other. The job's own classes choose
(usercode.choose_lightning, run by every rank and tool before anything of launch imports
Lightning, sets LAUNCH_LIGHTNING); every runtime module takes Lightning from here, and
lightning_compat its internals, so one copy of launch's code serves both.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

from launcher.config.components import NAMESPACES, lightning_in_use

NAME = lightning_in_use()
FABRIC = NAMESPACES[NAME]


def module(path: str = "") -> ModuleType:
    """`module("callbacks")`: that module of this rank's Lightning (the package itself for "")."""
    return importlib.import_module(f"{NAME}.{path}" if path else NAME)


def loaded() -> list[str]:
    """The Lightning namespaces imported in this process (a rank imports its own alone)."""
    return sorted(n for n in NAMESPACES if n in sys.modules)


def fabric_module(path: str) -> ModuleType:
    return importlib.import_module(f"{FABRIC}.{path}")


pl = module()
Callback = pl.Callback
LightningDataModule = pl.LightningDataModule
LightningModule = pl.LightningModule
Trainer = pl.Trainer
seed_everything = pl.seed_everything

_callbacks = module("callbacks")
EarlyStopping = _callbacks.EarlyStopping
LearningRateMonitor = _callbacks.LearningRateMonitor
ModelCheckpoint = _callbacks.ModelCheckpoint
ProgressBar = _callbacks.ProgressBar
StochasticWeightAveraging = _callbacks.StochasticWeightAveraging
TQDMProgressBar = _callbacks.TQDMProgressBar

_loggers = module("loggers")
CSVLogger = _loggers.CSVLogger
TensorBoardLogger = _loggers.TensorBoardLogger

DDPStrategy = module("strategies").DDPStrategy
ModelParallelStrategy = module("strategies").ModelParallelStrategy
SLURMEnvironment = module("plugins.environments").SLURMEnvironment
TorchElasticEnvironment = module("plugins.environments").TorchElasticEnvironment
UnrepeatedDistributedSampler = module("overrides.distributed").UnrepeatedDistributedSampler
RunningStage = module("trainer.states").RunningStage
TrainerFn = module("trainer.states").TrainerFn
grad_norm = module("utilities").grad_norm
rank_zero_only = module("utilities").rank_zero_only
is_overridden = module("utilities.model_helpers").is_overridden
TorchCheckpointIO = fabric_module("plugins.io.torch_io").TorchCheckpointIO
