"""Ranks forked from the agent's preloaded fork server (job.preload_ranks, launcher/entry/agent.py,
launcher/runtime/preload.py, launcher/runtime/forked.py) train bit for bit what ranks started as
fresh interpreters train, and are what a fresh interpreter would be."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.runs import assert_same_tensors, final_state, metric_rows, submit, wait_end, write_job

pytestmark = pytest.mark.multiprocess


def test_forked_ranks_train_bit_for_bit_what_fresh_interpreters_train_and_are_set_up_as_they_are(tmp_path: Path) -> None:
    """World size 3, a DataLoader worker a rank, randomness in the model (dropout, noise) and the
    data split; one run with each way of starting ranks."""
    runs = {}
    for preload in ("true", "false"):
        probes = tmp_path / f"probes-{preload}"
        probes.mkdir()
        job = write_job(tmp_path, f"preload-{preload}", sleep=0.0, epochs=2, model="ProbedMLP",
                        extra_args=f', probe_dir = "{probes}"')
        job.write_text(job.read_text().replace("batch_size = 32 }", "batch_size = 32, num_workers = 1 }"))
        runs[preload] = submit(job, tmp_path / "runs", "--procs", "3", "--set", f"job.preload_ranks={preload}")
    for run_dir in runs.values():
        info = wait_end(run_dir)
        assert info["state"] == "completed", info
    forked, fresh = runs["true"], runs["false"]
    assert_same_tensors(final_state(forked), final_state(fresh), "weights")
    assert metric_rows(forked) == metric_rows(fresh)

    for preload in ("true", "false"):
        probes = [json.loads((tmp_path / f"probes-{preload}" / f"rank-{r}.json").read_text()) for r in range(3)]
        assert all((tmp_path / f"probes-{preload}" / f"exit-{r}").is_file() for r in range(3)), preload
        for p in probes:
            assert p["lightning_rank"] == p["rank"] and p["torchmetrics_rank"] == p["local_rank"], p
            assert str(p["threads"]) == p["omp"], p
            assert p["argv"][0].endswith("launcher/runtime/__main__.py") and p["argv"][1] == str(runs[preload]), p
        from_server = ["multiprocessing.forkserver" in p["parent"] for p in probes]
        assert from_server == [preload == "true"] * 3, [p["parent"] for p in probes]
    assert len({p["pid"] for p in probes}) == 3
