"""`launch verify`: a job that resumes exactly is certified; one that does not is named, with the
first step and the piece of state that diverged."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.launch import REPO
from tests.helpers.runs import ran_on

pytestmark = pytest.mark.multiprocess

JOB = """
[job]
name = "{name}"
seed = 6

[model]
class_path = "{model}"
init_args = {{ in_features = 64, hidden = 16, lr = 0.02, dropout = 0.25 }}

[data]
class_path = "digits"
init_args = {{ data_dir = "{data}", batch_size = 16, num_workers = 1 }}
"""


def start_verify(tmp: Path, name: str, model: str, procs: int, *args: str) -> subprocess.Popen:
    """`launch verify` of a job file naming `model`, or of the script `model` (a .py path)."""
    job = Path(model)
    if job.suffix != ".py":
        job = tmp / f"{name}.toml"
        job.write_text(JOB.format(name=name, model=model, data=tmp / name / "data"))
    return subprocess.Popen([sys.executable, "-m", "launcher.cli", "verify", str(job), "--runs-dir", str(tmp / "runs"),
                             "--procs", str(procs), *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")})


def test_verify_certifies_an_exact_script_and_names_a_model_attribute_outside_the_state_dict(tmp_path: Path) -> None:
    """The exact one, a plain script in the `pytorch_lightning` namespace (tests/scripts/train_pl.py:
    its own Trainer and progress bar, fit and test; verify's [trainer] limits replace its max_epochs), at 3 ranks
    (where a summation-order bug would show); the counting job at 1 (its counter is wrong after any
    resume, at any world size); each rank with a DataLoader worker; side by side (their start-ups
    overlap)."""
    exact = start_verify(tmp_path, "exact", "tests/scripts/train_pl.py", 3, "--preemptions", "2", "--seed", "3",
                         "--", "--epochs", "5")  # and killed once
    counting = start_verify(tmp_path, "counting", "tests.helpers.modules.CountingLossMLP", 1, "--preemptions", "1",
                            "--seed", "1")
    out, err = exact.communicate(timeout=900)
    assert exact.returncode == 0, out + err[-4000:]
    assert out.startswith("exact: preempted 2 time(s) and killed once"), out
    assert "16 steps x 3 ranks" in out
    assert "preempted at steps" in err and "every process SIGKILLed at step" in err, err
    runs = sorted((tmp_path / "runs" / "verify" / "train_pl").iterdir())
    assert len(runs) == 3 and all((r / "checkpoints" / "last.ckpt").exists() for r in runs)
    for run in runs:  # on pytorch_lightning's Trainer, never importing lightning.pytorch
        console = (run / "console.log").read_text()
        assert "[launch] Trainer(max_epochs=5) in the script: the job's trainer.max_epochs = 2 replaces it" in console
        # verify's job turns the bar off: the script's own TQDMProgressBar is left out (Lightning refuses
        # a bar with enable_progress_bar=False: the run failed)
        assert "[launch] the script's own progress bar (TQDMProgressBar) is left out: trainer.enable_progress_bar " \
               "is false" in console
        ran_on(run, "pytorch_lightning")

    out, err = counting.communicate(timeout=900)
    assert counting.returncode == 1, out + err[-4000:]
    assert out.startswith("NOT exact: the preempted run first differs at step "), out
    assert "the model's attribute `seen` (outside its state_dict): 0 here, " in out, out
    assert "in the reference" in out and "self.register_buffer" in out, out
    assert "the killed run first differs at step " in out, out



STREAM_JOB = """
[job]
name = "{name}"
seed = 6

[model]
class_path = "mlp"
init_args = {{ in_features = 64, hidden = 16, lr = 0.02, dropout = 0.25 }}

[data]
class_path = "tests.helpers.streams.StreamingDigits"
init_args = {{ data_dir = "{data}", batch_size = 16, plain = "{name}", workers = 1 }}
"""


def start_stream_verify(tmp: Path, name: str) -> subprocess.Popen:
    job = tmp / f"{name}.toml"
    job.write_text(STREAM_JOB.format(name=name, data=tmp / name / "data"))
    return subprocess.Popen([sys.executable, "-m", "launcher.cli", "verify", str(job), "--runs-dir", str(tmp / "runs"),
                             "--procs", "1", "--epochs", "2", "--batches", "5", "--preemptions", "1", "--seed", "2"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")})


def test_verify_certifies_a_replayed_stream_and_names_one_that_draws_from_an_unseeded_source(tmp_path: Path) -> None:
    """A plain stream is replayed on resume, which is exact when it streams the same each time: one
    told its epoch and augmenting from the global generator is certified; one whose augmentation
    comes from a generator the OS seeds differs between two runs from the same start, before
    anything stopped them, and verify says that rather than blame the resume. Side by side."""
    exact, unseeded = start_stream_verify(tmp_path, "epoch"), start_stream_verify(tmp_path, "unseeded")
    out, err = exact.communicate(timeout=900)
    assert exact.returncode == 0, out + err[-4000:]
    assert out.startswith("exact: preempted 1 time(s) and killed once"), out
    out, err = unseeded.communicate(timeout=900)
    assert unseeded.returncode == 1, out + err[-4000:]
    assert out.startswith("NOT exact: the preempted run first differs at step 0 (rank 0): the training data "
                          "(UnseededStream): two runs from the same start drew different batches before anything "
                          "stopped them.\n  what to change: it draws from a source launch does not seed"), out
    assert "the killed run first differs at step 0 (rank 0): the training data (UnseededStream)" in out, out
