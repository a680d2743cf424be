"""The user's own callbacks and loggers ([[callbacks]], [[loggers]]) and the W&B and MLflow trackers
across a preemption: one tracker run each, the steps of metrics.csv, nothing sent twice, and a
callback whose state comes back. W&B offline and an MLflow file store, read back with their own
record types and client."""

from __future__ import annotations

import json
import struct
from collections import Counter
from pathlib import Path

import pytest

from launcher.runtime.trackers import TrackerRecord
from tests.helpers.runs import STEPS_PER_EPOCH, count, metric_rows, preempt_at, submit, wait_end, write_job

EXTRA = """
[[callbacks]]
class_path = "tests.helpers.modules.BatchCounter"
init_args = {{ report = "{report}" }}

[[loggers]]
class_path = "TensorBoardLogger"
init_args = {{ name = "mine", default_hp_metric = false }}

[logging.wandb]
project = "launch-test"
tags = ["a", "b"]
mode = "offline"

[logging.mlflow]
experiment = "trk"
"""


def wandb_records(path: Path):  # noqa: ANN201
    """W&B's transaction log (`run-ID.wandb`): its header, then LevelDB-style framed records, each
    a `wandb_internal_pb2.Record`."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def csv_points(run_dir: Path) -> Counter[tuple[int, str, float]]:
    """Every (step, metric, value) of metrics.csv, as often as it was logged (the epoch is in each row)."""
    return Counter((int(r["step"]), k, float(v)) for r in metric_rows(run_dir) for k, v in r.items() if k != "step" and v)


@pytest.mark.multiprocess
def test_trackers_and_user_callbacks_continue_across_a_preemption(tmp_path: Path, monkeypatch) -> None:
    job = write_job(tmp_path, "trk", sleep=0.05, epochs=2)
    report = tmp_path / "counter.json"
    job.write_text(job.read_text() + EXTRA.format(report=report))
    # a 1 s grace: the preemption (save, W&B and MLflow closing) takes longer than half of it
    run_dir = submit(job, tmp_path / "runs", "--set", "cluster.signal_grace_s=1")
    preempt_at(run_dir, (10,), timeout=180)
    info = wait_end(run_dir)
    assert info["state"] == "completed" and count(run_dir, "resumed") == 1, info
    assert "more than half of the 1 s grace (cluster.signal_grace_s)" in info["warning"], info
    assert "warning: the last preemption took" in (run_dir / "console.log").read_text()
    expected = csv_points(run_dir)
    assert {k for _, k, _ in expected} >= {"train_loss_step", "val_loss", "epoch"}

    # the user callback's state came back with the checkpoint: it saw every batch once
    assert json.loads(report.read_text())["batches"] == 2 * STEPS_PER_EPOCH
    # the user logger (a bare name: Lightning's TensorBoardLogger) wrote under the run directory,
    # one version for the whole run, every step of every metric as often as in metrics.csv
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mine = run_dir / "loggers" / "tensorboardlogger" / "mine" / run_dir.name
    acc = EventAccumulator(str(mine), size_guidance={"scalars": 0})
    acc.Reload()
    tb = Counter((e.step, tag) for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag))
    assert tb == Counter({(s, k): n for (s, k, _), n in expected.items()})

    # MLflow: one run, every (step, metric, value) of metrics.csv as often, so nothing sent twice
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(run_dir / "mlruns").as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("trk").experiment_id])
    assert run.info.run_id == json.loads((run_dir / "loggers" / "mlflow.json").read_text())["run_id"]
    assert run.info.status == "FINISHED"
    assert Counter((m.step, key, m.value) for key in run.data.metrics
                   for m in client.get_metric_history(run.info.run_id, key)) == expected

    # W&B: one run id in every attempt's folder, the global step as W&B's step, each step one row
    files = sorted((run_dir / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # one an attempt
    wandb_id = json.loads((run_dir / "loggers" / "wandb.json").read_text())["run_id"]
    assert {f.name for f in files} == {f"run-{wandb_id}.wandb"}
    steps, points = [], set()
    for f in files:
        for record in wandb_records(f):
            if record.WhichOneof("record_type") == "run":
                assert record.run.run_id == wandb_id and list(record.run.tags) == ["a", "b"]
            if record.WhichOneof("record_type") == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
                steps.append(row["_step"])
                assert row["trainer/global_step"] == row["_step"]
                points |= {(row["_step"], k, float(v)) for k, v in row.items()
                           if not k.startswith("_") and k != "trainer/global_step"}
    assert len(steps) == len(set(steps)), "a step sent twice"
    assert points == set(expected)


def test_a_tracker_record_skips_only_what_an_earlier_attempt_sent(tmp_path: Path) -> None:
    first = TrackerRecord(tmp_path / "t.json")
    first.keep_run_id("abc")
    for step, keys in ((3, {"a": 1}), (6, {"a": 1}), (6, {"b": 2})):
        assert not first.already_sent(step, keys)  # nothing is skipped within an attempt
        first.sent(step, keys)
    again = TrackerRecord(tmp_path / "t.json")  # the next attempt, resumed from step 4
    assert again.run_id == "abc"
    assert again.already_sent(5, {"a": 1}) and again.already_sent(6, {"a": 1, "b": 2})
    assert not again.already_sent(6, {"c": 3})  # logged at step 6 by the lost attempt's last moments: not yet
    assert not again.already_sent(7, {"a": 1})
