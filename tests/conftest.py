from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.helpers.launch import REPO, run_launch  # noqa: F401 - fixtures below use REPO's layout


@pytest.fixture
def write(tmp_path: Path):
    """write('name.toml', text) -> path, with the text dedented."""

    def _write(name: str, text: str) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    return _write


DIGITS_JOB = """
    [job]
    name = "{name}"
    seed = 7

    [model]
    class_path = "{model}"
    init_args = {{ in_features = 64, hidden = 32, lr = {lr} }}

    [data]
    class_path = "{data}"
    init_args = {{ {data_args} }}

    [trainer]
    max_epochs = {epochs}
    log_every_n_steps = 2
    enable_progress_bar = false
    {trainer_extra}
"""


@pytest.fixture
def digits_job(write, tmp_path: Path):
    """A small digits job file; keyword arguments fill the template above."""

    def _job(name: str = "tiny", model: str = "mlp", data: str = "digits", lr: float = 0.01, epochs: int = 1,
             data_args: str | None = None, trainer_extra: str = "", extra: str = "") -> Path:
        data_args = data_args or f'data_dir = "{tmp_path / "data"}", batch_size = 64'
        text = DIGITS_JOB.format(name=name, model=model, data=data, lr=lr, epochs=epochs, data_args=data_args,
                                 trainer_extra=trainer_extra) + textwrap.dedent(extra)
        return write(f"{name}.toml", text)

    return _job


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """A real SLURM controller and node daemons on this machine (tests/slurm/cluster.sh), for the
    session: tests/test_slurm.py, and the SLURM cases of other features."""
    script = REPO / "tests" / "slurm" / "cluster.sh"
    up = subprocess.run(["bash", str(script), "up"], capture_output=True, text=True, timeout=600)
    if up.returncode != 0:
        pytest.fail(f"could not start the SLURM test cluster:\n{up.stdout}\n{up.stderr}")
    yield
    subprocess.run(["bash", str(script), "down"], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def lit_baseline(tmp_path_factory) -> Path:
    """The plain script's uninterrupted run (tests/helpers/runs.py, lit_reference), once a session:
    the reference of scripts, LightningCLI projects and configs training the same model on the same
    data with the same seed, in either namespace (tests/test_scripts.py, tests/test_namespaces.py)."""
    from tests.helpers.runs import lit_reference

    return lit_reference(tmp_path_factory.mktemp("lit-baseline") / "runs")


@pytest.fixture(scope="session")
def interrupted_script_run(tmp_path_factory) -> Path:
    """The plain script at 3 ranks, preempted twice mid-epoch and then rank 1 SIGKILLed (restarted by
    itself), run to its end once a session: four attempts, for tests/test_scripts.py (bit for bit
    against `lit_baseline`) and tests/test_ui.py (what the pages show of it)."""
    import os
    import signal

    from tests.helpers.runs import (
        LIT_SCRIPT,
        LIT_SHAPE,
        LIT_STEPS,
        preempt_at,
        progress_step,
        rank_pid,
        submit,
        wait_end,
        wait_for,
    )

    runs = tmp_path_factory.mktemp("interrupted") / "runs"
    run_dir = submit(REPO / LIT_SCRIPT, runs, *LIT_SHAPE, "--", "--epochs", "3", "--sleep", "0.15")
    preempt_at(run_dir, (4, LIT_STEPS + 5))
    kill_at = max(2 * LIT_STEPS + 3, progress_step(run_dir) + 8)  # a periodic checkpoint since the last resume
    wait_for(lambda: progress_step(run_dir) >= kill_at, 240, f"step {kill_at}", run_dir)
    os.kill(rank_pid(run_dir, 1), signal.SIGKILL)
    wait_end(run_dir, timeout=400)
    return run_dir
