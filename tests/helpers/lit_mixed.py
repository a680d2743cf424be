"""A data module made at run time from the other Lightning (`type()`, which no reading of the
source can follow): only the rank, looking at the class itself, can refuse the mix."""

import importlib

OldDigits = type("OldDigits", (importlib.import_module("pytorch_lightning").LightningDataModule,), {})
