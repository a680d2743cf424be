"""A LightningCLI project's entry point, written as users write one: `python cli_lit.py fit
--config cli_lit.yaml` (the CLI runs the subcommand), or `python cli_lit.py --config
cli_lit.yaml` (`run=False`: the script calls fit and test itself). launch runs it unchanged:
`launch submit tests/scripts/cli_lit.py -- fit --config tests/scripts/cli_lit.yaml`."""

import sys

from lightning.pytorch.cli import LightningCLI

from tests.helpers.lit import LitDigits, LitMLP


def main() -> None:
    if sys.argv[1:2] and sys.argv[1] in ("fit", "validate", "test", "predict"):
        LightningCLI(LitMLP, LitDigits, seed_everything_default=11)
        return
    cli = LightningCLI(LitMLP, LitDigits, seed_everything_default=11, run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path="best")


if __name__ == "__main__":
    main()
