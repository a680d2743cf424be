"""User datamodules that fail inside the job."""

from datamodules.digits import DigitsDataModule


class PrepareFails(DigitsDataModule):
    def prepare_data(self) -> None:
        raise FileNotFoundError("the dataset is not at /nonexistent/dataset (prepare_data)")


class SetupFailsOnRank1(DigitsDataModule):
    def setup(self, stage: str | None = None) -> None:
        if self.trainer is not None and self.trainer.global_rank == 1:
            raise ValueError("rank 1 cannot read its shard")
        super().setup(stage)
