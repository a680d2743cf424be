"""Real runs: `launch submit` starts real torchrun agents and 2 processes talking over gloo."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.launch import run_launch
from tests.helpers.runs import metric_rows

pytestmark = pytest.mark.multiprocess


def submit(*args: str, runs: Path, timeout: float = 300) -> tuple[object, Path]:
    result = run_launch("submit", *args, "--runs-dir", str(runs), "--follow", timeout=timeout)
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    return result, run_dir


def last_value(run_dir: Path, key: str) -> float:
    return [float(r[key]) for r in metric_rows(run_dir) if r.get(key)][-1]


def status(run_dir: Path) -> dict:
    result = run_launch("status", str(run_dir), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_readme_first_job_trains_digits_to_90_percent_with_two_ddp_processes(tmp_path) -> None:
    start = time.monotonic()
    result, run_dir = submit("jobs/digits.toml", runs=tmp_path / "runs")
    elapsed = time.monotonic() - start
    assert result.returncode == 0, result.stderr + result.stdout[-3000:]
    assert run_dir.parent == (tmp_path / "runs" / "digits").resolve()
    assert last_value(run_dir, "val_acc") >= 0.9
    assert last_value(run_dir, "test_acc") >= 0.9
    info = status(run_dir)
    assert info["state"] == "completed" and info["restarts"] == 0 and info["world_size"] == 2
    assert info["global_step"] > 0 and info["epoch"] == 15
    print(f"digits default job: {elapsed:.1f} s wall, val_acc {last_value(run_dir, 'val_acc'):.4f}")

    # everything the run produced is in its directory, and reads back with the real readers
    for name in ("config.toml", "command.txt", "events.jsonl", "console.log", "logs/rank-0.log", "logs/rank-1.log"):
        assert (run_dir / name).is_file(), name
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == info["global_step"] and "net.1.weight" in ckpt["state_dict"]
    assert len(list((run_dir / "checkpoints").glob("epoch=*.ckpt"))) == 1  # save_top_k = 1

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # one TensorBoard run: every event file of fit and test in one directory, read as one
    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    val_acc = acc.Scalars("val_acc")
    assert len(val_acc) == 15 and val_acc[-1].value == pytest.approx(last_value(run_dir, "val_acc"))
    assert acc.Scalars("test_acc")[-1].value == pytest.approx(last_value(run_dir, "test_acc"))

    events = [json.loads(line)["event"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events == ["submitted", "started", "training_started", "first_step", "trained", "finished"]

    # logs: the console by default, one rank's full log with --rank, runs lists it
    logs = run_launch("logs", str(run_dir))
    assert logs.returncode == 0 and "completed in" in logs.stdout
    rank1 = run_launch("logs", str(run_dir), "--rank", "1")
    assert rank1.returncode == 0 and rank1.stdout == (run_dir / "logs" / "rank-1.log").read_text()
    missing = run_launch("logs", str(run_dir), "--rank", "7")
    assert missing.returncode == 2 and "no log for rank 7" in missing.stderr
    listing = run_launch("--runs-dir", str(tmp_path / "runs"), "runs")
    assert run_dir.name in listing.stdout and "completed" in listing.stdout
    by_id = run_launch("--runs-dir", str(tmp_path / "runs"), "status", run_dir.name, "--json")
    assert json.loads(by_id.stdout)["run_dir"] == str(run_dir)


def read_records(path: Path) -> list[dict[str, str]]:
    out = []
    for line in path.read_text().splitlines():
        what, *fields = line.split()
        out.append({"what": what, **dict(f.split("=", 1) for f in fields)})
    return out


def test_prepare_data_once_setup_on_every_rank_and_output_is_rank_aware(digits_job, tmp_path) -> None:
    counts = tmp_path / "counts"
    counts.mkdir()
    job = digits_job(data="tests.helpers.modules.CountingDigits",
                     data_args=f'count_dir = "{counts}", data_dir = "{tmp_path / "data"}"')
    result, run_dir = submit(str(job), runs=tmp_path / "runs")
    assert result.returncode == 0, result.stderr + result.stdout[-3000:]
    prepares, setups = read_records(counts / "prepare.txt"), read_records(counts / "setup.txt")
    assert [p["rank"] for p in prepares] == ["0"]
    fit_setups = [s for s in setups if s["what"] == "setup-fit"]
    assert sorted(s["rank"] for s in fit_setups) == ["0", "1"]
    # the barrier: no rank set up (read data) before prepare_data had finished (it sleeps 1 s)
    assert min(float(s["t"]) for s in fit_setups) >= float(prepares[0]["t"]) + 1.0

    console = (run_dir / "console.log").read_text()
    assert "hello from rank 0" in console and "hello from rank 1" not in console
    assert "hello from rank 1" in (run_dir / "logs" / "rank-1.log").read_text()
    assert "[rank 1] " in console and "careful from rank 1" in console
    assert "[rank 0] " in console and "careful from rank 0" in console
    assert console.count("Test metric") == 1


def test_two_node_run_prepares_data_once_per_node_without_shared_filesystem(digits_job, write, tmp_path) -> None:
    counts = tmp_path / "counts"
    counts.mkdir()
    cluster = write("cluster.toml", '[local]\nbackend = "local"\ngpus_per_node = 0\nshared_filesystem = false\n')
    job = digits_job(data="tests.helpers.modules.CountingDigits",
                     data_args=f'count_dir = "{counts}", data_dir = "{tmp_path / "data"}"')
    result = run_launch("--cluster-file", str(cluster), "submit", str(job), "--nodes", "2", "--procs", "1",
                        "--runs-dir", str(tmp_path / "runs"), "--follow", timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    prepares = read_records(counts / "prepare.txt")
    assert sorted(p["node"] for p in prepares) == ["0", "1"]  # one per node, by local rank 0 of each
    assert sorted(s["rank"] for s in read_records(counts / "setup.txt") if s["what"] == "setup-fit") == ["0", "1"]
    command = (run_dir / "command.txt").read_text()
    assert command.count("--nnodes 2") == 2 and "is_host=1" in command and "is_host=0" in command
    assert status(run_dir)["world_size"] == 2


def test_validation_metrics_are_exact_on_an_odd_validation_set(digits_job, tmp_path) -> None:
    """181 validation samples on 2 ranks: stock DDP evaluates 182 (one twice) and floors a mean."""
    rows = {}
    for procs in ("1", "2"):
        job = digits_job(name=f"exact{procs}", model="tests.helpers.modules.CountingMLP", lr=0.0,
                         data_args=f'data_dir = "{tmp_path / "data"}", batch_size = 16, val_size = 181')
        result, run_dir = submit(str(job), "--procs", procs, runs=tmp_path / "runs")
        assert result.returncode == 0, result.stderr + result.stdout[-3000:]
        rows[procs] = {k: last_value(run_dir, k) for k in ("val_count", "val_const", "val_acc", "val_loss", "test_acc")}
    assert rows["2"]["val_count"] == 181.0 == rows["1"]["val_count"]
    assert rows["2"]["val_const"] == 1.0
    assert rows["2"]["val_acc"] == rows["1"]["val_acc"]
    assert rows["2"]["test_acc"] == rows["1"]["test_acc"]
    assert rows["2"]["val_loss"] == pytest.approx(rows["1"]["val_loss"], rel=1e-6)  # float sums, other order


def test_a_model_s_own_collectives_at_the_epoch_end_meet_every_other_rank_s(digits_job, tmp_path) -> None:
    """At world size 3, a model whose on_train_epoch_end gathers across ranks and logs a synchronised
    value: every rank reaches the epoch end's collectives in the same order, the gathered and logged
    values are right, and progress.json has the epoch's metrics. Rank zero's progress writer and its
    progress bar (Lightning's, pytorch-lightning issue 21264) once read the metrics at the epoch's
    end on rank zero alone, which computed its synchronised values there before the model's hook:
    rank zero's collectives met the model's on the other ranks, and the run hung at its first epoch
    end (either reader alone hangs it)."""
    job = digits_job(name="gathers", model="tests.helpers.modules.EpochGatheringMLP", epochs=2)
    result, run_dir = submit(str(job), "--procs", "3", "--set", "job.stall_timeout_s=30", "--set", "job.test_after_fit=false",
                         "--set", "trainer.enable_progress_bar=true", runs=tmp_path / "runs")
    assert result.returncode == 0, result.stderr + result.stdout[-3000:]
    epoch_rows = [r for r in metric_rows(run_dir) if r.get("rank_sum")]
    assert [(r["epoch"], float(r["rank_sum"]), float(r["gathered_ranks"])) for r in epoch_rows] == \
        [("0", 3.0, 3.0), ("1", 3.0, 3.0)], epoch_rows
    assert all(r.get("train_loss_epoch") and r.get("train_acc") for r in epoch_rows), epoch_rows
    progress = json.loads((run_dir / "progress.json").read_text())
    assert progress["stage"] == "fit-done" and progress["epoch"] == 2, progress
    assert progress["metrics"]["rank_sum"] == 3.0 and "train_loss_epoch" in progress["metrics"], progress


def test_a_failing_rank_fails_the_run_with_its_rank_and_error(digits_job, tmp_path) -> None:
    job = digits_job(name="fails", model="tests.helpers.modules.FailingMLP", epochs=3)
    start = time.monotonic()
    result, run_dir = submit(str(job), runs=tmp_path / "runs")
    assert result.returncode == 1
    assert time.monotonic() - start < 120
    info = status(run_dir)
    assert info["state"] == "failed" and info["failed_rank"] == 1
    assert "RuntimeError: boom on rank 1" in info["error"]
    assert "[rank 1] " in (run_dir / "console.log").read_text()
    assert json.loads((run_dir / "errors" / "rank-1.json").read_text())["type"] == "RuntimeError"


def test_a_model_with_unused_parameters_is_told_the_key_that_trains_it(digits_job, tmp_path) -> None:
    """launch lays DDP's gradient buckets out once and does not look for unused parameters each
    step (runtime/ddp_compat.py): a model that has them fails in one line naming the key, and with
    the key it trains."""
    job = digits_job(name="unused", model="tests.helpers.modules.UnusedParameterMLP")
    result, run_dir = submit(str(job), runs=tmp_path / "runs")
    assert result.returncode == 1
    info = status(run_dir)
    assert info["state"] == "failed" and info["restarts"] == 0, info
    assert "UnusedParameters: some parameters of the model got no gradient in the last step (DDP cannot reduce " \
           "them): set job.find_unused_parameters = true" in info["error"], info["error"]
    result, run_dir = submit(str(job), "--set", "job.find_unused_parameters=true", runs=tmp_path / "runs")
    assert result.returncode == 0, result.stderr
    assert status(run_dir)["state"] == "completed"


def test_cancel_stops_every_process_of_a_running_job(digits_job, tmp_path) -> None:
    job = digits_job(name="long", epochs=1000)
    result = run_launch("submit", str(job), "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 120
    while status(run_dir)["global_step"] < 5:  # training for real before we cancel
        assert time.monotonic() < deadline, (run_dir / "console.log").read_text()[-3000:]
        time.sleep(0.5)
    assert status(run_dir)["state"] == "running"
    cancel = run_launch("cancel", str(run_dir))
    assert cancel.returncode == 0 and "cancelled" in cancel.stdout, cancel.stderr
    from launcher.backends.local import processes_of
    from launcher.rundir import RunDir

    assert processes_of(RunDir(run_dir)) == []
    assert status(run_dir)["state"] == "cancelled"
    again = run_launch("cancel", str(run_dir))
    assert again.returncode == 2 and "not running" in again.stderr


def test_smoke_runs_a_few_batches_of_everything(tmp_path) -> None:
    result = run_launch("smoke", "jobs/digits.toml", "--runs-dir", str(tmp_path / "runs"), timeout=300)
    assert result.returncode == 0, result.stderr + result.stdout[-3000:]
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    info = status(run_dir)
    assert info["state"] == "completed" and info["global_step"] == 4 and info["world_size"] == 2
    assert "test_acc" in info["metrics"]


def test_a_per_step_synced_log_in_validation_is_refused_in_one_line(digits_job, tmp_path) -> None:
    job = digits_job(model="tests.helpers.modules.StepSyncValidationMLP")
    result = run_launch("submit", str(job), "--runs-dir", str(tmp_path / "runs"), "--follow", timeout=300)
    assert result.returncode == 1
    info = status(Path(result.stdout.strip().splitlines()[-1]))
    assert info["state"] == "failed", info
    assert "EvaluationStepSync: self.log('val_step_count', ..., sync_dist=True, on_step=True) in validation " \
           "(sanity check): launch evaluates every sample exactly once" in info["error"], info["error"]


@pytest.mark.multiprocess
def test_a_run_submitted_after_another_waits_for_it_then_runs(digits_job, tmp_path) -> None:
    """--after: the waiting run stays pending (and says for what) while the other one runs; it
    starts once that one completed. A run that can never start is refused at submission."""
    import subprocess
    import sys

    from launcher.rundir import RunDir

    runs = tmp_path / "runs"
    first = RunDir.create(runs, "first")  # a run "running": its supervisor is a sleep naming its directory
    (first.path / "config.toml").write_text('[cluster]\nbackend = "local"\n')
    first.add_event("submitted", backend="local")
    first.add_event("started", backend="local")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", str(first.path)])
    first.supervisor_pid.write_text(f"{sleeper.pid}\n")
    try:
        out = run_launch("submit", str(digits_job()), "--runs-dir", str(runs), "--after", first.run_id)
        assert out.returncode == 0, out.stderr
        second = Path(out.stdout.strip().splitlines()[-1])
        time.sleep(3)
        status = json.loads(run_launch("status", str(second), "--json").stdout)
        assert status["state"] == "pending" and status["waiting_for"] == [f"{first.run_id} (running) to complete"]
        assert "waiting   for " + first.run_id in run_launch("status", str(second)).stdout
        first.add_event("finished", exit_code=0)
        ended_at = time.time()
    finally:
        sleeper.kill()
    final = json.loads(run_launch("status", str(second), "--json").stdout)
    deadline = time.monotonic() + 120
    while not final["terminal"] and time.monotonic() < deadline:
        time.sleep(0.5)
        final = json.loads(run_launch("status", str(second), "--json").stdout)
    assert final["state"] == "completed", final
    started = [json.loads(line) for line in (second / "events.jsonl").read_text().splitlines()
               if json.loads(line)["event"] == "started"]
    assert len(started) == 1 and started[0]["t"] >= ended_at - 1.5  # it polls once a second

    failed = RunDir.create(runs, "broken")
    (failed.path / "config.toml").write_text('[cluster]\nbackend = "local"\n')
    failed.add_event("submitted", backend="local")
    failed.add_event("failed", exit_code=1, error="boom")
    refused = run_launch("submit", str(digits_job()), "--runs-dir", str(runs), "--after", f"{failed.run_id}:ok")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert f"--after {failed.run_id}:ok: that run ended failed" in refused.stderr
