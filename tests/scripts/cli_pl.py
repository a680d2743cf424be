"""cli_lit.py's LightningCLI project in the `pytorch_lightning` namespace (`pytorch_lightning.cli`),
with the same config (tests/scripts/cli_lit.yaml: the same classes' arguments): `launch submit
tests/scripts/cli_pl.py -- fit --config tests/scripts/cli_lit.yaml` (the CLI runs the subcommand),
or without one (`run=False`: the script calls fit and test itself)."""

import sys

from pytorch_lightning.cli import LightningCLI

from tests.helpers.lit_pl import LitDigits, LitMLP


def main() -> None:
    if sys.argv[1:2] and sys.argv[1] in ("fit", "validate", "test", "predict"):
        LightningCLI(LitMLP, LitDigits, seed_everything_default=11)
        return
    cli = LightningCLI(LitMLP, LitDigits, seed_everything_default=11, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best")


if __name__ == "__main__":
    main()
