"""The submitted code is the code that runs: a snapshot at submit, imported by every attempt.

The first tests read what a snapshot takes from a made-up submit directory; the last ones run a
user's own model file (in a temporary submit directory), edit a module it imports while the run
trains, and check what the next attempt trained with: the snapshot after a preemption's requeue,
the edited code after `launch resume --code current`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher import code_snapshot
from tests.helpers.launch import run_launch
from tests.helpers.runs import (
    assert_same_training,
    count,
    events,
    final_state,
    kill_every_process,
    preempt_at,
    progress_step,
    wait_end,
    wait_for,
)


def tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_a_snapshot_takes_the_class_paths_modules_and_what_they_import_from_the_submit_directory(tmp_path) -> None:
    tree(tmp_path, {
        "mypkg/__init__.py": "",
        "mypkg/nets.py": "import torch\nfrom mypkg.blocks import Block\nimport helpers\nclass Net: ...\n",
        "mypkg/blocks.py": "from .util import x\nclass Block: ...\n",
        "mypkg/util.py": "x = 1\n",
        "mypkg/weights.pt": "not code",  # data stays where it is
        "mypkg/__pycache__/nets.cpython-311.pyc": "",
        "helpers.py": "import launcher.rundir\nimport unrelated_installed_pkg\n",
        "untouched.py": "x = 2\n",  # imported by nothing the job uses
        "launcher/__init__.py": "",  # launch's own package is never copied
        "mypkg/runs/job/RUN/events.jsonl": "",  # a run directory inside a package
        "mypkg/runs/job/RUN/code/mypkg/nets.py": "old\n",
        "broken.py": "def (:\n",
    })
    dest = tmp_path / "run" / "code"
    taken = code_snapshot.take(tmp_path, {"model": "mypkg.nets.Net", "data": "digits"}, dest)
    assert taken["packages"] == ["helpers", "mypkg"], taken["packages"]
    assert sorted(taken["files"]) == ["helpers.py", "mypkg/__init__.py", "mypkg/blocks.py", "mypkg/nets.py",
                                      "mypkg/util.py"], sorted(taken["files"])
    assert (dest / "mypkg" / "nets.py").read_text() == (tmp_path / "mypkg" / "nets.py").read_text()
    assert not list(tmp_path.joinpath("run").glob(".code.*")), "a temp folder was left behind"
    # taken again after an edit: replaced whole, and the manifests say what changed
    (tmp_path / "mypkg" / "util.py").write_text("x = 3\n")
    (tmp_path / "helpers.py").write_text("import mypkg.util\n")
    again = code_snapshot.take(tmp_path, {"model": "mypkg.nets.Net", "data": "digits"}, dest)
    assert code_snapshot.changed(taken, again) == ["helpers.py", "mypkg/util.py"]
    assert (dest / "mypkg" / "util.py").read_text() == "x = 3\n"
    assert code_snapshot.manifest(dest) == again


# --------------------------------------------------------------------------- real runs

USER_MODEL = '''
import time

from helpers_local import SCALE
from models.mlp import MLP


class Net(MLP):
    """The example MLP, its loss scaled by a constant from another module of the submit directory."""

    def __init__(self, step_sleep: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.step_sleep = step_sleep

    def training_step(self, batch, batch_idx):
        time.sleep(self.step_sleep)
        return super().training_step(batch, batch_idx) * SCALE
'''

USER_JOB = """
[job]
name = "{name}"
seed = 8

[model]
class_path = "mymodel.Net"
init_args = {{ in_features = 64, hidden = 32, lr = 0.01, dropout = 0.2, step_sleep = {sleep} }}

[data]
class_path = "digits"
init_args = {{ data_dir = "{data}", batch_size = 32 }}

[trainer]
max_epochs = 2
log_every_n_steps = 3
enable_progress_bar = false
num_sanity_val_steps = 0

[checkpoint]
every_n_train_steps = 2
"""


def submit_here(workdir: Path, name: str, sleep: float) -> Path:
    """`launch submit` run from the user's own directory (the submit directory)."""
    job = workdir / f"{name}.toml"
    job.write_text(USER_JOB.format(name=name, sleep=sleep, data=workdir / "data"))
    result = run_launch("submit", str(job), "--runs-dir", str(workdir / "runs"), cwd=workdir)
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.mark.multiprocess
def test_code_edited_while_a_run_trains_reaches_it_only_through_resume_code_current(tmp_path) -> None:
    tree(tmp_path, {"mymodel.py": USER_MODEL, "helpers_local.py": "SCALE = 1.0\n"})
    baseline = submit_here(tmp_path, "base", 0.0)
    requeued = submit_here(tmp_path, "requeued", 0.1)
    current = submit_here(tmp_path, "current", 0.1)
    submitted = [e for e in events(requeued) if e["event"] == "submitted"][0]
    assert submitted["code"] == {"packages": ["helpers_local", "mymodel"], "files": 2}, submitted
    assert (requeued / "code" / "helpers_local.py").read_text() == "SCALE = 1.0\n"
    for run_dir in (requeued, current):
        wait_for(lambda r=run_dir: progress_step(r) >= 5, 240, "step 5", run_dir)
    (tmp_path / "helpers_local.py").write_text("SCALE = 3.0\n")  # the user edits a module the model imports
    kill_every_process(current)  # and one run's machine dies

    # a preemption's requeue trains the submitted code: bit-identical to the uninterrupted run
    preempt_at(requeued, (6,))
    assert wait_end(requeued)["state"] == "completed"
    assert wait_end(baseline)["state"] == "completed"
    assert_same_training(requeued, baseline)

    # `launch resume --code current` after the crash: the edit is in, and events.jsonl says so
    result = run_launch("resume", str(current), "--code", "current", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "1 file(s) differ: helpers_local.py" in result.stderr, result.stderr
    info = wait_end(current)
    assert info["state"] == "completed" and count(current, "resumed") == 1, info
    asked = [e for e in events(current) if e["event"] == "resume_requested"][-1]
    assert (asked["code"], asked["code_changed"]) == ("current", ["helpers_local.py"]), asked
    assert (current / "code" / "helpers_local.py").read_text() == "SCALE = 3.0\n"
    ours, theirs = final_state(current), final_state(baseline)
    assert any(not ours[k].equal(theirs[k]) for k in theirs), "the edited code changed nothing"
    assert json.loads((current / "code" / code_snapshot.MANIFEST).read_text())["packages"] == ["helpers_local",
                                                                                              "mymodel"]
