"""`launch submit train.py -- ARGS`: a user's plain Lightning script runs unchanged on every rank,
and every Trainer it builds is launch's: exact resume, restarts, the run directory."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.helpers.launch import REPO, run_launch
from tests.helpers.runs import (
    LIT_SCRIPT,
    LIT_SHAPE,
    LIT_STEPS,
    assert_console_truthful,
    assert_same_tensors,
    assert_same_training,
    events,
    metric_rows,
    preempt_at,
    progress_step,
    ran_on,
    read_checkpoint,
    submit,
    wait_end,
    wait_for,
)

SCRIPT = LIT_SCRIPT
CLI = "tests/scripts/cli_lit.py"
CLI_PL = "tests/scripts/cli_pl.py"
STEPS, SHAPE = LIT_STEPS, LIT_SHAPE


@pytest.mark.multiprocess
def test_a_plain_script_at_world_size_3_preempted_twice_and_a_rank_killed_ends_bit_identical(lit_baseline,
                                                                                              interrupted_script_run) -> None:
    """The script (`import lightning as L`; a jittering worker, dropout, noise; its own Trainer with
    devices=1) at 3 ranks, stopped twice mid-epoch by preemptions, then rank 1 SIGKILLed: restarted
    by itself from the periodic checkpoint (conftest's `interrupted_script_run`). Bit for bit its
    uninterrupted run, and its `trainer.test(ckpt_path="best")` after fit finds the run's best checkpoint."""
    run_dir = interrupted_script_run
    info = wait_end(run_dir, timeout=10)
    assert info["state"] == "completed" and info["global_step"] == 3 * STEPS, info
    stops = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert len(stops) == 2 and all(0 < e["batch_in_epoch"] < STEPS for e in stops), stops
    (restart,) = [e for e in events(run_dir) if e["event"] == "restarted"]
    assert restart["rank"] == 1 and restart["kind"] == "infrastructure", restart
    console = (run_dir / "console.log").read_text()
    assert "[launch] Trainer(devices=1) in the script: launch sets it from the job's resources" in console
    # the ranks whose peer vanished say so in one line; their tracebacks are in their own logs
    lost = re.findall(r"^\[rank (\d)\] lost its peers in a collective \((.*)\): another rank", console, re.M)
    assert lost and all(rank != "1" and "by peer" in words and ".cc:" not in words for rank, words in lost), lost
    assert not re.search(r"^\[rank \d\] Traceback", console, re.M) and "ChildFailedError" not in console
    assert all("Traceback" in (run_dir / "logs" / f"rank-{rank}.log").read_text() for rank, _ in lost)
    assert_console_truthful(run_dir, attempts=4)
    # checkpoint.every_n_minutes = "auto": rank zero timed its periodic saves and chose the interval
    chosen = [e for e in events(run_dir) if e["event"] == "checkpoint_interval"]
    assert chosen and all(60 <= e["every_s"] <= 3600 and e["save_s"] > 0 for e in chosen), chosen
    assert f"[launch] periodic checkpoint {chosen[0]['why']}" in console
    assert "ckpt      every 5 steps; auto, every " in run_launch("status", str(run_dir)).stdout
    ran_on(run_dir, "lightning.pytorch")
    assert_same_training(run_dir, lit_baseline)
    tested = [r for r in metric_rows(run_dir) if r.get("test_loss")]
    assert len(tested) == 1, tested  # the script's test, after fit, from the best checkpoint
    assert (run_dir / "code" / SCRIPT).is_file()  # snapshotted with the code it imports
    assert (run_dir / "code" / "tests" / "helpers" / "lit.py").is_file()


NAMESPACES = pytest.mark.parametrize(("cli", "namespace"), [(CLI, "lightning.pytorch"), (CLI_PL, "pytorch_lightning")],
                                     ids=["lightning", "pytorch_lightning"])


@pytest.mark.multiprocess
@NAMESPACES
def test_a_lightning_cli_project_with_a_yaml_config_preempted_twice_trains_what_the_script_trains(
        lit_baseline, tmp_path, cli, namespace) -> None:
    """`launch submit cli_lit.py -- --config cli_lit.yaml --model.step_sleep 0.15` (LightningCLI,
    run=False: it builds the Trainer from its config, every argument given, and the script calls fit
    and test), in each namespace (cli_pl.py: `pytorch_lightning.cli`): stopped twice mid-epoch
    (every attempt's SaveConfigCallback writes its config.yaml again), it ends bit for bit where the
    `lightning` plain script's uninterrupted run does."""
    run_dir = submit(REPO / cli, tmp_path / "runs", *SHAPE, "--", "--config", "tests/scripts/cli_lit.yaml",
                     "--model.step_sleep", "0.15")
    preempt_at(run_dir, (5, STEPS + 4))
    info = wait_end(run_dir, timeout=400)
    assert info["state"] == "completed" and info["global_step"] == 3 * STEPS, info
    stops = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert len(stops) == 2 and all(0 < e["batch_in_epoch"] < STEPS for e in stops), stops
    console = (run_dir / "console.log").read_text()
    assert "in the script: launch sets it" not in console  # LightningCLI's defaults are not choices to report
    ran_on(run_dir, namespace)
    assert list(run_dir.rglob("config.yaml")), "LightningCLI's SaveConfigCallback wrote no config.yaml"
    assert_console_truthful(run_dir, attempts=3)
    assert_same_training(run_dir, lit_baseline)


@pytest.mark.multiprocess
@NAMESPACES
def test_a_lightning_cli_subcommand_preempted_twice_trains_what_the_script_trains(lit_baseline, tmp_path, cli,
                                                                                  namespace) -> None:
    """`-- fit --config cli_lit.yaml --trainer.max_epochs 3 --model.step_sleep 0.15`: LightningCLI's
    own `fit` subcommand, in each namespace (the CLI calls fit; no test follows, so the plain
    script's test row is the one row the reference has beyond it). The `pytorch_lightning` one is
    then cancelled and continued with `launch resume --code current` (the snapshot taken again holds
    the script, its arguments stand)."""
    run_dir = submit(REPO / cli, tmp_path / "runs", *SHAPE, "--", "fit", "--config", "tests/scripts/cli_lit.yaml",
                     "--trainer.max_epochs", "3", "--model.step_sleep", "0.15")
    preempt_at(run_dir, (3, STEPS + 6))
    if cli == CLI_PL:
        wait_for(lambda: progress_step(run_dir) >= 2 * STEPS + 4, 240, "a step mid-epoch 3", run_dir)
        cancel = run_launch("cancel", str(run_dir))
        assert cancel.returncode == 0 and "cancelled" in cancel.stdout, cancel.stdout + cancel.stderr
        resumed = run_launch("resume", str(run_dir), "--code", "current", cwd=REPO)
        assert resumed.returncode == 0 and "0 file(s) differ" in resumed.stderr, resumed.stderr
        assert (run_dir / "code" / CLI_PL).is_file()
    info = wait_end(run_dir, timeout=400)
    assert info["state"] == "completed" and info["global_step"] == 3 * STEPS, info
    stops = [e for e in events(run_dir) if e["event"] == "preempted"]  # the cancel saves as a preemption does
    assert len(stops) == 2 + (cli == CLI_PL) and all(0 < e["batch_in_epoch"] < STEPS for e in stops), stops
    ran_on(run_dir, namespace)
    ours, reference = (read_checkpoint(r / "checkpoints" / "last.ckpt") for r in (run_dir, lit_baseline))
    for key in ("state_dict", "optimizer_states", "lr_schedulers"):
        assert_same_tensors(ours[key], reference[key], key)
    trained = [{k: v for k, v in r.items() if k != "test_loss"} for r in metric_rows(lit_baseline) if not r["test_loss"]]
    assert metric_rows(run_dir) == trained


@pytest.mark.slurm
def test_a_script_on_three_slurm_nodes_preempted_and_requeued_trains_what_it_trains_here(lit_baseline, slurm_cluster,
                                                                                        tmp_path) -> None:
    """The same script on the SLURM test cluster, 3 nodes x 1 rank (srun mode, one CPU a rank as
    the local reference has), preempted mid-epoch: saved, requeued by the batch script, resumed;
    bit for bit its uninterrupted run on one machine."""
    from tests.test_slurm import PROFILES

    cluster = tmp_path / "cluster.toml"
    cluster.write_text(PROFILES)

    def launch(*args: str):  # noqa: ANN202
        return run_launch("--cluster-file", str(cluster), *args, timeout=300)

    result = launch("submit", str(REPO / SCRIPT), "--cluster", "test-wide", "--nodes", "3", "--procs", "1",
                    "--runs-dir", str(tmp_path / "runs"), "--set", "resources.cpus_per_task=1", *SHAPE[2:],
                    "--", "--epochs", "3", "--sleep", "0.15")
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    preempt_at(run_dir, (STEPS + 4,), timeout=300, preempt=lambda: launch("preempt", str(run_dir)))
    wait_for(lambda: any(e["event"] in ("finished", "failed") for e in events(run_dir)), 400, "the end", run_dir)
    info = json.loads(launch("status", str(run_dir), "--json").stdout)
    assert info["state"] == "completed" and info["restarts"] == 1 and info["world_size"] == 3, info
    (stop,) = [e for e in events(run_dir) if e["event"] == "preempted"]
    assert 0 < stop["batch_in_epoch"] < STEPS, stop
    assert [e["event"] for e in events(run_dir)].count("requeued") == 1
    assert "srun" in (run_dir / "job.sbatch").read_text()
    assert_same_training(run_dir, lit_baseline)


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
