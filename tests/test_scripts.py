"""`launch submit train.py -- ARGS`: a user's plain Lightning script runs unchanged on every rank,
and every Trainer it builds is launch's: exact resume, restarts, the run directory."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.helpers.launch import REPO, run_launch
from tests.helpers.runs import (
    assert_same_tensors,
    assert_same_training,
    events,
    metric_rows,
    preempt_at,
    progress_step,
    rank_pid,
    read_checkpoint,
    submit,
    wait_end,
    wait_for,
)

SCRIPT = "tests/scripts/train_lit.py"
CLI = "tests/scripts/cli_lit.py"
STEPS = 15  # 1,437 training digits over 3 ranks, batches of 32
SHAPE = ("--procs", "3", "--set", "checkpoint.every_n_train_steps=5")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Path:
    """The plain script's uninterrupted run: the reference of the script and of the LightningCLI
    project, which trains the same model on the same data with the same seed."""
    tmp = tmp_path_factory.mktemp("script-baseline")
    run_dir = submit(REPO / SCRIPT, tmp / "runs", *SHAPE, "--", "--epochs", "3")
    info = wait_end(run_dir, timeout=400)
    assert info["state"] == "completed" and info["global_step"] == 3 * STEPS, info
    return run_dir


@pytest.mark.multiprocess
def test_a_plain_script_at_world_size_3_preempted_twice_and_a_rank_killed_ends_bit_identical(baseline, tmp_path) -> None:
    """The script (`import lightning as L`; a jittering worker, dropout, noise; its own Trainer with
    devices=1) at 3 ranks, stopped twice mid-epoch by preemptions, then rank 1 SIGKILLed: restarted
    by itself from the periodic checkpoint. Bit for bit its uninterrupted run, and its
    `trainer.test(ckpt_path="best")` after fit finds the run's best checkpoint."""
    run_dir = submit(REPO / SCRIPT, tmp_path / "runs", *SHAPE, "--", "--epochs", "3", "--sleep", "0.15")
    preempt_at(run_dir, (4, STEPS + 5))
    kill_at = max(2 * STEPS + 3, progress_step(run_dir) + 8)  # a periodic checkpoint since the last resume
    wait_for(lambda: progress_step(run_dir) >= kill_at, 240, f"step {kill_at}", run_dir)
    os.kill(rank_pid(run_dir, 1), signal.SIGKILL)
    info = wait_end(run_dir, timeout=400)
    assert info["state"] == "completed" and info["global_step"] == 3 * STEPS, info
    stops = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert len(stops) == 2 and all(0 < e["batch_in_epoch"] < STEPS for e in stops), stops
    (restart,) = [e for e in events(run_dir) if e["event"] == "restarted"]
    assert restart["rank"] == 1 and restart["kind"] == "infrastructure", restart
    console = (run_dir / "console.log").read_text()
    assert "[launch] Trainer(devices=1) in the script: launch sets it from the job's resources" in console
    assert "lightning/pytorch/" in console and "pytorch_lightning/" not in console
    assert_same_training(run_dir, baseline)
    tested = [r for r in metric_rows(run_dir) if r.get("test_loss")]
    assert len(tested) == 1, tested  # the script's test, after fit, from the best checkpoint
    assert (run_dir / "code" / SCRIPT).is_file()  # snapshotted with the code it imports
    assert (run_dir / "code" / "tests" / "helpers" / "lit.py").is_file()


@pytest.mark.multiprocess
def test_a_lightning_cli_project_with_a_yaml_config_preempted_twice_trains_what_the_script_trains(baseline,
                                                                                                  tmp_path) -> None:
    """`launch submit cli_lit.py -- --config cli_lit.yaml --model.step_sleep 0.15` (LightningCLI,
    run=False: it builds the Trainer from its config, every argument given, and the script calls fit
    and test): stopped twice mid-epoch (every attempt's SaveConfigCallback writes its config.yaml
    again), it ends bit for bit where the plain script's uninterrupted run does."""
    run_dir = submit(REPO / CLI, tmp_path / "runs", *SHAPE, "--", "--config", "tests/scripts/cli_lit.yaml",
                     "--model.step_sleep", "0.15")
    preempt_at(run_dir, (5, STEPS + 4))
    info = wait_end(run_dir, timeout=400)
    assert info["state"] == "completed" and info["global_step"] == 3 * STEPS, info
    stops = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert len(stops) == 2 and all(0 < e["batch_in_epoch"] < STEPS for e in stops), stops
    console = (run_dir / "console.log").read_text()
    assert "in the script: launch sets it" not in console  # LightningCLI's defaults are not choices to report
    assert_same_training(run_dir, baseline)


@pytest.mark.multiprocess
def test_a_lightning_cli_subcommand_preempted_twice_trains_what_the_script_trains(baseline, tmp_path) -> None:
    """`-- fit --config cli_lit.yaml --trainer.max_epochs 3 --model.step_sleep 0.15`: LightningCLI's
    own `fit` subcommand (the CLI calls fit; no test follows, so the plain script's test row is the
    one row the reference has beyond it)."""
    run_dir = submit(REPO / CLI, tmp_path / "runs", *SHAPE, "--", "fit", "--config", "tests/scripts/cli_lit.yaml",
                     "--trainer.max_epochs", "3", "--model.step_sleep", "0.15")
    preempt_at(run_dir, (3, STEPS + 6))
    info = wait_end(run_dir, timeout=400)
    assert info["state"] == "completed" and info["global_step"] == 3 * STEPS, info
    stops = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert len(stops) == 2 and all(0 < e["batch_in_epoch"] < STEPS for e in stops), stops
    ours, reference = (read_checkpoint(r / "checkpoints" / "last.ckpt") for r in (run_dir, baseline))
    for key in ("state_dict", "optimizer_states", "lr_schedulers"):
        assert_same_tensors(ours[key], reference[key], key)
    trained = [{k: v for k, v in r.items() if k != "test_loss"} for r in metric_rows(baseline) if not r["test_loss"]]
    assert metric_rows(run_dir) == trained


@pytest.mark.multiprocess
def test_a_script_that_ends_without_training_fails_in_one_line(tmp_path: Path, monkeypatch) -> None:
    """Submitted through the Python API, its command line in `args`."""
    import launcher

    monkeypatch.chdir(REPO)
    run = launcher.submit(SCRIPT, procs=1, args=["--no-fit"], runs_dir=tmp_path / "runs")
    assert run.job == "train_lit"  # named after the script
    info = run.wait(timeout=300)
    assert info.state.value == "failed" and "\n" not in info.error, info
    assert info.error.endswith(f"ScriptError: {SCRIPT} ended without calling Trainer.fit: there is no training for "
                               "launch to keep alive (does it train only under a condition, or from another entry "
                               "point?)"), info.error


def test_a_missing_or_mixed_script_is_refused_at_submission_in_one_line(tmp_path: Path) -> None:
    missing = run_launch("submit", str(tmp_path / "nope.py"), "--runs-dir", str(tmp_path / "runs"))
    assert missing.returncode == 2 and missing.stderr == f"launch: error: {tmp_path / 'nope.py'}: script: no such file\n"
    mixed = tmp_path / "mixed.py"
    mixed.write_text("import lightning as L\nfrom pytorch_lightning.callbacks import EarlyStopping\n")
    result = run_launch("submit", str(mixed), "--runs-dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert result.returncode == 2 and not (tmp_path / "runs").exists(), result.stderr
    assert result.stderr == (f"launch: error: {mixed}: job.script: the job's classes come from both Lightning namespaces: "
                             "mixed.py imports lightning, mixed.py imports pytorch_lightning.callbacks; no Trainer takes "
                             "both: import one of `lightning` (import lightning as L) or `pytorch_lightning` "
                             "everywhere\n"), result.stderr
