"""The typed records between processes (launcher/records.py): the JSON on disk is what the files
held before the types existed, older or torn files still read, and readers get fields."""

from __future__ import annotations

import json

from launcher.lifecycle import Probe, RunStatus, State
from launcher.records import (
    AliveMarker,
    Heartbeat,
    LocalProbeDetails,
    Plan,
    PlanNode,
    Preemption,
    RankError,
    SlurmJob,
    SlurmProbeDetails,
    StalledRank,
)


def test_each_record_writes_the_json_its_file_always_held() -> None:
    beat = Heartbeat(rank=1, host="n2", step=30, progress_at=10.0, slowest_step_s=0.2, beat_at=12.0)
    assert beat.to_json() == {"rank": 1, "host": "n2", "step": 30, "progress_at": 10.0, "slowest_step_s": 0.2,
                              "beat_at": 12.0}  # slurm_step and stepped only once set
    stepped = Heartbeat(rank=1, host="n2", slurm_step="7.0", stepped=True).to_json()
    assert (stepped["slurm_step"], stepped["stepped"]) == ("7.0", True)
    assert AliveMarker(3, "n1", 99).to_json() == {"rank": 3, "host": "n1", "pid": 99}
    assert RankError(0, "n1", "ValueError", "bad", "Traceback ...").to_json() == {
        "rank": 0, "host": "n1", "type": "ValueError", "message": "bad", "traceback": "Traceback ..."}
    assert SlurmJob("12").to_json() == {"job_id": "12"}
    assert SlurmJob("12_3", array_job_id="12").to_json() == {"job_id": "12_3", "array_job_id": "12"}
    plan = Plan("/w", [PlanNode(0, ["torchrun", "-m", "x"], {"A": "1"})])
    assert json.loads(plan.dumps()) == {"workdir": "/w", "nodes": [{"node": 0, "argv": ["torchrun", "-m", "x"],
                                                                    "env": {"A": "1"}}]}
    assert Plan.from_json(json.loads(plan.dumps())) == plan
    info = Preemption(step=5, epoch=1, batch_in_epoch=2, signal="USR1", signal_at=1.0, signal_to_saved_s=0.5,
                      save_s=0.1, checkpoint_bytes=10)
    assert list(info.to_json()) == ["step", "epoch", "batch_in_epoch", "signal", "signal_at", "signal_to_saved_s",
                                    "save_s", "checkpoint_bytes"]


def test_older_and_torn_files_read(tmp_path) -> None:
    path = tmp_path / "rank-0.json"
    path.write_text(json.dumps({"rank": 0, "host": "n1", "step": 3, "progress_at": 1.0, "beat_at": 2.0,
                                "a_key_from_a_newer_launch": 1}))
    assert Heartbeat.read(path) == Heartbeat(rank=0, host="n1", step=3, progress_at=1.0, beat_at=2.0)
    path.write_text('{"rank": 0, "host": "n1", "st')  # torn
    assert Heartbeat.read(path) is None
    path.write_text("{}")  # no job id: not a slurm.json
    assert SlurmJob.read(path) is None
    assert RankError.from_json({"type": "Died", "message": "m"}).rank is None


def test_status_json_shows_the_probes_details_as_before() -> None:
    local = RunStatus("R", "J", "/r", "local", State.RUNNING, details=LocalProbeDetails(supervisor_pid=None))
    assert local.as_dict()["supervisor_pid"] is None  # the key was always there
    slurm = RunStatus("R", "J", "/r", "slurm", State.RUNNING, details=SlurmProbeDetails("7", "RUNNING"))
    view = slurm.as_dict()
    assert (view["slurm_job_id"], view["slurm_state"]) == ("7", "RUNNING") and "here_runner_pid" not in view
    assert slurm.slurm.slurm_state == "RUNNING" and local.slurm.slurm_job_id is None
    assert Probe(alive=True, details={"slurm_job_id": "9", "slurm_state": "PENDING"}).details == \
        SlurmProbeDetails("9", "PENDING")


def test_a_stalled_rank_shows_its_heartbeat_and_how_long_it_was_quiet() -> None:
    found = StalledRank(Heartbeat(rank=1, host="n1", step=37, progress_at=1.0, beat_at=2.0, stepped=True),
                        idle_s=44.0, silent_s=43.0, beating=False)
    assert found.to_json() == {"rank": 1, "host": "n1", "step": 37, "progress_at": 1.0, "slowest_step_s": 0.0,
                               "beat_at": 2.0, "stepped": True, "idle_s": 44.0, "silent_s": 43.0, "beating": False,
                               "before_first_step": False, "node_silent": False}
