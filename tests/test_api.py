"""The Python API (`import launcher`): a run submitted, preempted, waited for and read from a
notebook or a pipeline, with the CLI's one-line errors; it imports no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

import launcher
from launcher.api import _toml
from launcher.config.resolve import parse_override
from tests.helpers.launch import REPO, run_launch
from tests.helpers.runs import assert_same_training, events, progress_step, wait_for, write_job


def test_import_launcher_and_its_api_imports_no_torch() -> None:
    code = ("import sys, launcher; launcher.submit, launcher.Run, launcher.runs, launcher.LaunchError; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'lightning', 'pytorch_lightning')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


@pytest.mark.parametrize("value", [3, -1, 0.25, 1e-4, float("inf"), True, False, "cosine", 'a "quoted" \\ path\n',
                                   "12:00:00", [1, 2], ["a", "b"], {"lr": 0.1, "name": "adamw"}])
def test_set_values_reach_the_job_as_the_python_values_they_were(value) -> None:
    _, parsed = parse_override(f"job.x={_toml('job.x', value)}")
    assert parsed == value and type(parsed) is type(value)


@pytest.mark.multiprocess
def test_the_api_drives_a_run_through_a_preemption_to_completion_and_reads_its_metrics(tmp_path) -> None:
    runs_dir, every_2 = tmp_path / "runs", {"trainer.log_every_n_steps": 2}
    baseline = launcher.submit(write_job(tmp_path, "plain", sleep=0.0, epochs=2), procs=2, runs_dir=runs_dir, set=every_2)
    run = launcher.submit(write_job(tmp_path, "stopped", sleep=0.1, epochs=2), procs=2, runs_dir=runs_dir, set=every_2)
    assert launcher.Run(run.id, runs_dir=runs_dir) == run and run.job == "stopped"
    assert launcher.Run(run.dir).id == run.id
    with pytest.raises(TimeoutError, match="still"):
        run.wait(timeout=0.1, poll=0.05)
    wait_for(lambda: progress_step(run.dir) >= 8, 240, "step 8", run.dir)
    sent = run.preempt()
    assert sent.startswith("sent SIGUSR1 to "), sent
    final = run.wait(timeout=300)
    assert isinstance(final, launcher.RunStatus) and final.state == "completed" and final.global_step == 46, final
    assert baseline.wait(timeout=300).state == "completed"
    assert [e["event"] for e in events(run.dir)].count("resumed") == 1
    assert {r.id for r in launcher.runs(runs_dir)} == {run.id, baseline.id}

    rows = run.metrics()
    assert rows and all(isinstance(r["step"], int) and isinstance(r["epoch"], (int, type(None))) for r in rows), rows[:3]
    assert isinstance(rows[0]["lr-AdamW"], float) and any(isinstance(r["epoch"], int) for r in rows)
    assert any(isinstance(r["val_loss"], float) for r in rows) and any(r["val_loss"] is None for r in rows)
    assert rows == baseline.metrics()  # every row, as the API reads it
    assert_same_training(run.dir, baseline.dir)  # weights and optimizer too, bit for bit
    assert run.logs() and run.logs(rank=1)
    with pytest.raises(launcher.LaunchError, match=r"no log for rank 7 \(ranks with logs: 0, 1\)"):
        run.logs(rank=7)
    with pytest.raises(launcher.LaunchError, match="already completed"):
        run.resume()


def test_user_mistakes_raise_launch_error_with_the_clis_line(tmp_path) -> None:
    cli = run_launch("submit", str(tmp_path / "missing.toml"), "--runs-dir", str(tmp_path / "runs"))
    with pytest.raises(launcher.LaunchError) as failure:
        launcher.submit(tmp_path / "missing.toml", runs_dir=tmp_path / "runs")
    assert cli.returncode == 2 and cli.stderr.strip() == f"launch: error: {failure.value}", cli.stderr
    with pytest.raises(launcher.LaunchError, match=r"nope: no such run"):
        launcher.Run("nope", runs_dir=tmp_path / "runs")
    with pytest.raises(launcher.LaunchError, match=r"set: trainer.max_epochs: None \(NoneType\) is not a value"):
        launcher.submit(write_job(tmp_path, "job", sleep=0.0), set={"trainer.max_epochs": None})
    with pytest.raises(launcher.LaunchError, match=r"--set: trainer.max_epoch: unknown key; did you mean 'max_epochs'\?"):
        launcher.submit(write_job(tmp_path, "job", sleep=0.0), set={"trainer.max_epoch": 3}, runs_dir=tmp_path / "runs")
