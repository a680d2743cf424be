"""Pre-flight checks (launcher/runtime/preflight.py): each check on real parts, and a local run
whose site node check fails, which fails in one line before training, without a restart.

The SLURM side (the failing node recorded and excluded, the run completing on the others bit for
bit) is in tests/test_slurm.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from launcher.rundir import RunDir
from launcher.runtime.preflight import checkpoint_bytes, device_check, node_check, room_check
from tests.helpers.launch import run_launch
from tests.helpers.runs import events, wait_end


def test_each_check_passes_on_a_healthy_machine_and_names_what_failed_otherwise(tmp_path: Path) -> None:
    assert device_check(torch.device("cpu")) is None
    assert room_check(tmp_path / "checkpoints", 1024) is None
    assert not list((tmp_path / "checkpoints").iterdir())  # the probe file is gone
    too_much = room_check(tmp_path / "checkpoints", 10**18)
    assert too_much is not None and "less than room for two checkpoints (1000000000.00 GB)" in too_much, too_much
    (tmp_path / "a-file").write_text("")  # a directory that cannot be made (root may write anywhere else)
    assert room_check(tmp_path / "a-file" / "checkpoints", 1) == (
        f"run directory {tmp_path / 'a-file' / 'checkpoints'} is not writable: Not a directory")
    assert node_check(["true"]) is None
    assert node_check(["sh", "-c", "echo fine; echo 'GPU 3: ECC errors' >&2; exit 4"]) == (
        "site node check (cluster.node_check) `sh -c echo fine; echo 'GPU 3: ECC errors' >&2; exit 4` exited 4: "
        "GPU 3: ECC errors")
    assert node_check(["/no/such/nhc"]) == "site node check (cluster.node_check) `/no/such/nhc`: command not found"


def test_the_room_needed_is_the_newest_checkpoint_or_three_times_the_parameters(tmp_path: Path) -> None:
    run = RunDir(tmp_path)
    module = torch.nn.Linear(10, 10)  # 110 float32 parameters: 440 bytes
    assert checkpoint_bytes(run, module) == 3 * 440
    run.checkpoints.mkdir()
    (run.checkpoints / "last.ckpt").write_bytes(b"x" * 5000)
    assert checkpoint_bytes(run, module) == 5000


JOB = """
[job]
name = "preflight"
seed = 1

[model]
class_path = "mlp"
init_args = { in_features = 64, hidden = 16 }

[data]
class_path = "digits"
init_args = { data_dir = "DATA", batch_size = 32 }

[trainer]
max_epochs = 1
enable_progress_bar = false
"""

CLUSTER = """
[local]
backend = "local"
gpus_per_node = 0
node_check = ["sh", "-c", "echo checking; echo 'scratch is not mounted' >&2; exit 3"]
"""


@pytest.mark.multiprocess
def test_a_failing_site_node_check_fails_a_local_run_in_one_line_before_training(tmp_path: Path) -> None:
    job = tmp_path / "preflight.toml"
    job.write_text(JOB.replace("DATA", str(tmp_path / "data")))
    (tmp_path / "cluster.toml").write_text(CLUSTER)
    result = run_launch("--cluster-file", str(tmp_path / "cluster.toml"), "submit", str(job), "--runs-dir",
                        str(tmp_path / "runs"), "--procs", "2")
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    info = wait_end(run_dir, timeout=240)
    assert info["state"] == "failed" and info["restarts"] == 0, info  # the same node would fail again
    names = [e["event"] for e in events(run_dir)]
    assert "first_step" not in names and "restarted" not in names, names
    said = ("pre-flight check failed on {host}: site node check (cluster.node_check) `sh -c echo checking; echo "
            "'scratch is not mounted' >&2; exit 3` exited 3: scratch is not mounted")
    (failed,) = [e for e in events(run_dir) if e["event"] == "failed"]
    host = json.loads((run_dir / "errors" / "rank-0.json").read_text())["host"]
    assert failed["error"] == f"rank 0 ({host}): PreflightFailed: {said.format(host=host)}", failed
    console = (run_dir / "console.log").read_text()
    assert "Traceback" not in console and "another rank failed" not in console, console
    assert console.count(said.format(host=host)) == 2, console  # the rank's line, and the run's end
    # rank 1 (the node's other rank) stopped because of it: an echo, in its own log only
    rank1 = json.loads((run_dir / "errors" / "rank-1.json").read_text())
    assert rank1["message"].startswith("another rank failed its pre-flight check: rank 0 on "), rank1
    assert "Traceback" in (run_dir / "logs" / "rank-1.log").read_text()
    status = run_launch("status", str(run_dir)).stdout
    assert f"error     rank 0 ({host}): PreflightFailed: pre-flight check failed on {host}: site node check" in status
