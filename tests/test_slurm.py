"""Real SLURM: a controller and two node daemons on this machine (tests/slurm/cluster.sh)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from launcher.rundir import RunDir
from tests.helpers.launch import REPO, run_launch
from tests.helpers.runs import STEPS_PER_EPOCH, assert_same_training, preempt_at, progress_step, wait_for, write_job
from tests.helpers.values import NASTY, SECRETS

pytestmark = pytest.mark.slurm

PROFILE = """
[test-{mode}]
backend = "slurm"
partition = "debug"
gpus_per_node = 0
cpus_per_node = 2
max_nodes = 2
max_time = "02:00:00"
launch_mode = "{mode}"
"""
PROFILES = PROFILE.format(mode="srun") + PROFILE.format(mode="torchrun") + PROFILE.format(mode="srun").replace(
    "[test-srun]", "[test-weird]") + f"env = {{ WEIRD = {json.dumps(NASTY)} }}\n" + PROFILE.format(mode="srun").replace(
    # the ranks in the Apptainer stand-in (tests/slurm/bin/apptainer, first on the tasks' PATH)
    "[test-srun]", "[test-apptainer]") + f'apptainer_image = "{REPO / "tests" / "slurm" / "standin.sif"}"\n' + \
    f'env = {{ PATH = "{REPO / "tests" / "slurm" / "bin"}:{os.environ["PATH"]}" }}\n' + """
[test-bad-partition]
backend = "slurm"
partition = "no-such-partition"
gpus_per_node = 0

[test-wide]
backend = "slurm"
partition = "wide"
gpus_per_node = 0
cpus_per_node = 2
max_nodes = 4
max_time = "02:00:00"
launch_mode = "srun"
"""


@pytest.fixture
def cluster_file(slurm_cluster, tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(PROFILES)
    return path


def launch(cluster_file: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_launch("--cluster-file", str(cluster_file), *args, timeout=timeout)


def queue_size() -> int:
    return len(subprocess.run(["squeue", "-h"], capture_output=True, text=True).stdout.splitlines())


def reports(report_dir: Path, stage: str) -> dict[int, dict]:
    return {int(p.stem.split("-")[-1]): json.loads(p.read_text()) for p in report_dir.glob(f"{stage}-rank-*.json")}


@pytest.mark.parametrize(
    "profile,nodes,procs,environment",
    [
        ("test-srun", 2, 1, "SLURMEnvironment"),
        ("test-torchrun", 2, 1, "TorchElasticEnvironment"),
        ("test-srun", 2, 2, "SLURMEnvironment"),
    ],
    ids=["srun-2x1", "torchrun-2x1", "srun-2x2"],
)
def test_digits_job_completes_on_slurm(cluster_file, digits_job, tmp_path, profile, nodes, procs, environment) -> None:
    report = tmp_path / "report"
    report.mkdir()
    job = digits_job(model="tests.helpers.modules.ReportingMLP", epochs=2)
    job.write_text(job.read_text().replace("init_args = { in_features", f'init_args = {{ report_dir = "{report}", in_features'))
    result = launch(cluster_file, "submit", str(job), "--cluster", profile, "--nodes", str(nodes), "--procs", str(procs),
                    "--runs-dir", str(tmp_path / "runs"), "--follow")
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr + result.stdout[-3000:] + (run_dir / "events.jsonl").read_text()

    world = nodes * procs
    for stage, metric in (("fit", "val_acc"), ("test", "test_acc")):
        ranks = reports(report, stage)
        assert sorted(ranks) == list(range(world))
        assert {r["world_size"] for r in ranks.values()} == {world}
        assert {r["env"] for r in ranks.values()} == {environment}
        # synchronised, exactly; except the step loss, which the example models keep per rank (no
        # all-reduce per step; see models/classifier.py) and which must therefore differ
        synced = [{k: v for k, v in r["metrics"].items() if k != "train_loss_step"} for r in ranks.values()]
        assert all(one == synced[0] for one in synced) and len(synced[0]) >= 2
        if stage == "fit":
            assert len({r["metrics"]["train_loss_step"] for r in ranks.values()}) == world
        assert metric in ranks[0]["metrics"]
        if nodes == 2:
            assert {r["node"] for r in ranks.values()} == {"n1", "n2"}

    info = json.loads(launch(cluster_file, "status", str(run_dir), "--json").stdout)
    assert info["state"] == "completed" and info["backend"] == "slurm" and info["slurm_state"] == "COMPLETED"
    assert info["world_size"] == world and info["global_step"] > 0
    # one heartbeat file a node (runtime/beat_channel.py): its leader collects its ranks' beats
    assert sorted(p.name for p in (run_dir / "heartbeats").iterdir()) == [f"node-{n}.json" for n in range(nodes)]
    beats = RunDir(run_dir).read_heartbeats()
    assert [b.rank for b in beats] == list(range(world)) and all(b.done for b in beats), beats
    for rank in range(world):
        log = launch(cluster_file, "logs", str(run_dir), "--rank", str(rank))
        assert log.returncode == 0 and log.stdout == (run_dir / "logs" / f"rank-{rank}.log").read_text() != ""
    assert "completed in" in launch(cluster_file, "logs", str(run_dir)).stdout

    # what was submitted is exactly what render prints, byte for byte
    submitted = (run_dir / "submitit" / f"{info['slurm_job_id']}_submission.sh").read_text()
    assert submitted == (run_dir / "job.sbatch").read_text()
    assert submitted == launch(cluster_file, "render", str(run_dir)).stdout
    fresh = launch(cluster_file, "render", str(job), "--cluster", profile, "--nodes", str(nodes), "--procs", str(procs),
                   "--runs-dir", str(tmp_path / "runs")).stdout
    assert fresh == submitted.replace(run_dir.name, "RUN-ID")
    events = [json.loads(line)["event"] for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert events == ["submitted", "queued", "started", "training_started", "first_step", "trained", "finished"]


def test_cancel_ends_a_running_slurm_job(cluster_file, digits_job, tmp_path) -> None:
    job = digits_job(name="long", epochs=1000)
    result = launch(cluster_file, "submit", str(job), "--cluster", "test-srun", "--nodes", "2", "--procs", "1",
                    "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 120
    while json.loads(launch(cluster_file, "status", str(run_dir), "--json").stdout)["global_step"] < 5:
        assert time.monotonic() < deadline, (run_dir / "events.jsonl").read_text()
        time.sleep(1)
    cancel = launch(cluster_file, "cancel", str(run_dir))
    assert cancel.returncode == 0 and "cancelled" in cancel.stdout, cancel.stdout + cancel.stderr
    info = json.loads(launch(cluster_file, "status", str(run_dir), "--json").stdout)
    assert info["state"] == "cancelled" and info["slurm_state"] == "CANCELLED"
    listing = launch(cluster_file, "--runs-dir", str(tmp_path / "runs"), "runs")
    assert "cancelled" in listing.stdout
    assert "requeued" not in slurm_events(run_dir)  # the ranks saved on SIGTERM but did not requeue

    # resumed as a new job, it is preemptible again: the old cancel does not block its requeue
    resumed = launch(cluster_file, "resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    new_job = json.loads((run_dir / "slurm.json").read_text())["job_id"]
    assert new_job != info["slurm_job_id"]
    wait_for(lambda: slurm_events(run_dir).count("training_started") == 2 and progress_step(run_dir) >= 10, 120,
             "the resumed job to train", run_dir)
    assert launch(cluster_file, "preempt", str(run_dir)).returncode == 0
    wait_for(lambda: "requeued" in slurm_events(run_dir), 120, "the requeue of the resumed job", run_dir)
    assert launch(cluster_file, "cancel", str(run_dir)).returncode == 0


def test_impossible_requests_are_refused_before_sbatch(cluster_file, digits_job, tmp_path) -> None:
    job = digits_job()
    before = queue_size()
    for args, fragment in [
        (("--cluster", "test-srun", "--gpus", "1"), "1 GPUs per node requested; profile 'test-srun' nodes have 0"),
        (("--cluster", "test-srun", "--nodes", "3"), "3 nodes requested; profile 'test-srun' allows at most 2"),
        (("--cluster", "test-srun", "--set", "resources.time=03:00:00"), "allows at most 02:00:00"),
        (("--cluster", "test-srun", "--procs", "2", "--set", "resources.cpus_per_task=2"), "exceeds the 2 CPUs"),
        (("--cluster", "test-bad-partition"), "sbatch refused the job"),
    ]:
        result = launch(cluster_file, "submit", str(job), *args, "--runs-dir", str(tmp_path / "runs"))
        assert result.returncode == 2, result.stderr
        assert fragment in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert queue_size() == before
    assert not list((tmp_path / "runs").glob("*/*/config.toml"))  # refused runs leave nothing behind


def slurm_events(run_dir: Path) -> list[str]:
    return [json.loads(line)["event"] for line in (run_dir / "events.jsonl").read_text().splitlines()]


def uninterrupted(tmp: Path, name: str, epochs: int, profile: str, nodes: int) -> Path:
    """One uninterrupted run of the preemptable job on the test cluster (`--follow`: to its end)."""
    (tmp / "cluster.toml").write_text(PROFILES)
    job = write_job(tmp, name, sleep=0.0, epochs=epochs)
    result = launch(tmp / "cluster.toml", "submit", str(job), "--cluster", profile, "--nodes", str(nodes),
                    "--procs", "1", "--runs-dir", str(tmp / "runs"), "--follow", timeout=600)
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr + (run_dir / "events.jsonl").read_text()
    return run_dir


@pytest.fixture(scope="module")
def slurm_baseline(slurm_cluster, tmp_path_factory) -> Path:
    return uninterrupted(tmp_path_factory.mktemp("slurm-baseline"), "pre", 4, "test-srun", 2)


@pytest.mark.parametrize("profile", ["test-apptainer", "test-torchrun"], ids=["srun-in-apptainer", "torchrun"])
def test_slurm_job_preempted_by_signal_requeues_and_ends_bit_identical(cluster_file, slurm_baseline, tmp_path,
                                                                       digits_job, profile) -> None:
    """Preempted mid-epoch, saved, requeued by the batch script and resumed bit for bit. In srun mode
    the ranks run in the Apptainer stand-in, where SLURM's client tools answer "command not found",
    and a second run submitted --after this one waits through the requeue and starts after its end.
    In torchrun mode a rank is then SIGSTOPped (a stall): the batch script's watcher sees it make no
    progress for job.stall_timeout_s, records it and kills the step, the end hook finds every node
    answering and restarts the run (restart_on "infrastructure") as the next srun step of the same
    allocation, which resumes from its periodic checkpoint, still bit for bit."""
    import torch

    job = write_job(tmp_path, "pre", sleep=0.05, epochs=4)
    job.write_text(job.read_text().replace("save_top_k = 2", "save_top_k = 2\nevery_n_train_steps = 5")
                   .replace('restart_on = "infrastructure"', 'restart_on = "infrastructure"\nstall_timeout_s = 10'))
    result = launch(cluster_file, "submit", str(job), "--cluster", profile, "--nodes", "2", "--procs", "1",
                    "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    after = None
    if profile == "test-apptainer":
        result = launch(cluster_file, "submit", str(digits_job(name="next")), "--cluster", "test-srun", "--nodes", "1",
                        "--procs", "1", "--runs-dir", str(tmp_path / "runs"), "--after", f"{run_dir.name}:ok")
        assert result.returncode == 0, result.stderr
        after = Path(result.stdout.strip().splitlines()[-1])
        assert "#SBATCH --dependency=afterok:" in (after / "job.sbatch").read_text()
        waiting = json.loads(launch(cluster_file, "status", str(after), "--json").stdout)
        assert waiting["state"] == "pending" and waiting["waiting_for"][0].startswith(run_dir.name), waiting
    wait_for(lambda: progress_step(run_dir) >= 30, 180, "step 30", run_dir)
    job_id = json.loads((run_dir / "slurm.json").read_text())["job_id"]
    preempt = launch(cluster_file, "preempt", str(run_dir))
    assert preempt.returncode == 0 and f"scancel --signal=USR1 {job_id}" in preempt.stdout, preempt.stderr
    wait_for(lambda: "requeued" in slurm_events(run_dir), 120, "the requeue", run_dir)
    if profile == "test-torchrun":
        wait_for(lambda: "resumed" in slurm_events(run_dir) and progress_step(run_dir) >= 60, 180, "step 60", run_dir)
        pid = json.loads((run_dir / "errors" / "rank-1.alive").read_text())["pid"]  # the nodes share this machine
        subprocess.run(["kill", "-STOP", str(pid)], check=True)
        stopped_at = time.monotonic()
        wait_for(lambda: "stalled" in slurm_events(run_dir), 60, "the stall", run_dir)
        print(f"SLURM: SIGSTOP of rank 1 -> stall recorded in {time.monotonic() - stopped_at:.1f} s")
    wait_for(lambda: "finished" in slurm_events(run_dir) or "failed" in slurm_events(run_dir), 300, "the end",
             run_dir)
    info = json.loads(launch(cluster_file, "status", str(run_dir), "--json").stdout)
    killed = profile == "test-torchrun"
    assert info["state"] == "completed" and info["restarts"] == 1 + killed and info["slurm_job_id"] == job_id, info
    events = slurm_events(run_dir)
    assert events.index("preempted") < events.index("requeued") < events.index("resumed") < events.index("finished")
    # the cluster runs SLURM's default cred_expire (120 s): without the end hook's StartTime=now+2
    # the requeued job would wait 121 s for its BeginTime
    records = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    for i, rec in enumerate(records):
        if rec["event"] == "requeued" and rec.get("in_allocation"):  # the restart: the next step, same job
            again = next(r for r in records[i:] if r["event"] == "started")
            assert again["slurm_job_id"] == job_id and again["t"] - rec["t"] < 10, (rec, again)
            print(f"SLURM: restart in the allocation -> next step started in {again['t'] - rec['t']:.1f} s")
        elif rec["event"] == "requeued":
            assert rec["start_after_s"] == 2, rec
            again = next(r for r in records[i:] if r["event"] == "started")
            assert again["t"] - rec["t"] < 60, (rec, again)
            print(f"SLURM: requeue -> batch script started again in {again['t'] - rec['t']:.1f} s")
    if killed:  # stalled, restarted as the next step of the allocation, resumed from the periodic checkpoint
        assert events.index("stalled") < events.index("restarted"), events
        assert events[events.index("restarted") + 1:].count("requeued") == 1 and events.count("resumed") == 2, events
        assert [r.get("in_allocation") for r in records if r["event"] == "requeued"] == [None, True], records
        (stalled,) = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
                      if json.loads(line)["event"] == "stalled"]
        assert stalled["rank"] == 1 and 10 <= stalled["idle_s"] < 20, stalled
        (restarted,) = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
                        if json.loads(line)["event"] == "restarted"]
        assert restarted["kind"] == "infrastructure" and ": Stalled: no progress for " in restarted["cause"], restarted
    assert_same_training(run_dir, slurm_baseline)
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4 * STEPS_PER_EPOCH
    if profile == "test-apptainer":  # every task of both attempts ran in the "container"
        starts = (run_dir / "apptainer-standin.log").read_text().splitlines()
        assert len(starts) == 4 and all("hidden=scontrol" in line and "standin.sif" in line for line in starts), starts
        assert " apptainer exec --bind " in (run_dir / "job.sbatch").read_text()
        assert after is not None
        wait_for(lambda: "finished" in slurm_events(after) or "failed" in slurm_events(after), 180, "the next run", after)
        ended = max(json.loads(line)["time"] for line in (run_dir / "events.jsonl").read_text().splitlines())
        started = [json.loads(line) for line in (after / "events.jsonl").read_text().splitlines()
                   if json.loads(line)["event"] == "started"]
        assert slurm_events(after)[-1] == "finished" and len(started) == 1 and started[0]["time"] >= ended


def test_nasty_values_reach_a_slurm_job_exactly_and_secrets_stay_out_of_its_files(cluster_file, digits_job, tmp_path) -> None:
    """A runs dir, a profile env value and a --set value full of shell syntax; secrets in the environment."""
    report = tmp_path / f"report {NASTY}"
    job = digits_job(name="inject", model="tests.helpers.modules.EchoMLP", epochs=1)
    job.write_text(job.read_text().replace("init_args = { in_features",
                                           f"init_args = {{ note = 'x', report_dir = {json.dumps(str(report))}, in_features"))
    runs = tmp_path / f"runs {NASTY}"
    result = run_launch("--cluster-file", str(cluster_file), "submit", str(job), "--cluster", "test-weird", "--nodes", "2",
                        "--procs", "1", "--runs-dir", str(runs), "--set", f"model.init_args.note={NASTY}", "--follow",
                        env=SECRETS, timeout=300)
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr[-3000:]
    assert run_dir.parent.parent == runs
    for rank in (0, 1):
        seen = json.loads((report / f"rank-{rank}.json").read_text())
        assert seen == {"note": NASTY, "weird": NASTY, "run_dir": str(run_dir), "token": SECRETS["MY_API_TOKEN"]}, seen
    assert (run_dir / "submitit").is_dir() and list((run_dir / "submitit").glob("*_0_log.out"))  # #SBATCH --output
    for place in (tmp_path, REPO):
        assert not (place / "PWNED").exists() and not (place / "PWNED2").exists()
    for path in [p for p in run_dir.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, f"{name}'s value is in {path}"


def test_a_killed_rank_fails_the_slurm_job_within_seconds(cluster_file, tmp_path) -> None:
    job = write_job(tmp_path, "killed", sleep=0.1, epochs=100, restart_on="never")
    result = launch(cluster_file, "submit", str(job), "--cluster", "test-srun", "--nodes", "2", "--procs", "1",
                    "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    wait_for(lambda: progress_step(run_dir) >= 5, 180, "training", run_dir)
    pid = json.loads((run_dir / "errors" / "rank-1.alive").read_text())["pid"]  # the nodes share this machine
    subprocess.run(["kill", "-9", str(pid)], check=True)
    killed_at = time.monotonic()
    ended = lambda: any(json.loads(line)["event"] in ("finished", "failed")  # noqa: E731
                        for line in (run_dir / "events.jsonl").read_text().splitlines())
    wait_for(ended, 60, "the job to fail", run_dir)
    print(f"SLURM: SIGKILL of rank 1 -> job failed in {time.monotonic() - killed_at:.1f} s")
    info = json.loads(launch(cluster_file, "status", str(run_dir), "--json").stdout)
    assert info["state"] == "failed" and info["failed_rank"] == 1, info
    assert "rank 1 (n2)" in info["error"] and "without a Python error" in info["error"], info["error"]
    assert queue_size() == 0


@pytest.mark.parametrize("array", [True, False], ids=["job-array", "one-job-each"])
def test_a_sweep_on_a_slurm_profile_queues_every_point_and_tabulates(cluster_file, digits_job, tmp_path, array) -> None:
    job = digits_job(name="swept", epochs=1, extra='[checkpoint]\nmonitor = "val_acc"\nmode = "max"\n')
    result = launch(cluster_file, "sweep", str(job), "--cluster", "test-srun", "--nodes", "1", "--procs", "1",
                    "--runs-dir", str(tmp_path / "runs"), "--grid", "model.init_args.lr=0.002,0.05",
                    *([] if array else ["--no-array"]), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("as one job array" if array else "all queued at once") in result.stderr
    (table,) = (tmp_path / "runs" / "swept" / "sweeps").glob("*.csv")
    lines = table.read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("rank,model.init_args.lr,val_acc,state,run")
    ids = []
    for line in lines[1:]:
        run_dir = Path(line.split(",")[4])
        info = json.loads(launch(cluster_file, "status", str(run_dir), "--json").stdout)
        assert info["state"] == "completed" and info["backend"] == "slurm", info
        events = [json.loads(e)["event"] for e in (run_dir / "events.jsonl").read_text().splitlines()]
        assert events == ["submitted", "queued", "started", "training_started", "first_step", "trained", "finished"]
        assert "completed in" in launch(cluster_file, "logs", str(run_dir)).stdout  # the task's own log
        ids.append(info["slurm_job_id"])
    assert len(set(ids)) == 2
    if array:  # one array: ARRAYID_0 and ARRAYID_1
        assert {i.rsplit("_", 1)[1] for i in ids} == {"0", "1"} and len({i.rsplit("_", 1)[0] for i in ids}) == 1
        (record,) = (tmp_path / "runs" / "swept" / "sweeps").glob("*.json")
        assert json.loads(record.read_text())["slurm_array_job_id"] == ids[0].rsplit("_", 1)[0]


def test_launch_runs_asks_squeue_once_for_every_slurm_run(cluster_file, digits_job, tmp_path) -> None:
    """`launch runs` probes all SLURM runs with one squeue call, and asks scontrol only about a job
    that left the queue without its run recording an end."""
    from launcher import config
    from launcher.lifecycle import Event
    from launcher.rundir import atomic_write_text

    cfg = config.resolve(config.Request(job_file=str(digits_job()), cluster="test-srun", cluster_file=str(cluster_file),
                                        nodes=1, procs=1))
    sbatch = ["sbatch", "--parsable", "-p", "debug", "--output", "/dev/null"]
    running = subprocess.run([*sbatch, "--wrap", "sleep 120"], capture_output=True, text=True, check=True).stdout.strip()
    held = subprocess.run([*sbatch, "--hold", "--wrap", "sleep 120"], capture_output=True, text=True,
                          check=True).stdout.strip()
    runs_dir = tmp_path / "runs"
    try:
        # the last two: SLURM's state wins over the history's pending/running (requeued by SLURM
        # itself; started, but the batch script has not recorded it yet)
        for jid, events in ((running, [Event.STARTED]), (held, []), ("987654", [Event.STARTED, Event.FINISHED]),
                            (held, [Event.STARTED]), (running, [])):
            run = RunDir.create(runs_dir, "listed")
            atomic_write_text(run.config, config.dumps(config.finalize(cfg, run.path, run.run_id, str(digits_job()))))
            atomic_write_text(run.slurm_record, json.dumps({"job_id": jid}))
            for name in (Event.SUBMITTED, Event.QUEUED, *events):
                run.add_event(name)
            time.sleep(1.1)  # run ids are per second: keep the listing's order
        wait_for(lambda: subprocess.run(["squeue", "-h", "-j", running, "-o", "%T"], capture_output=True,
                                        text=True).stdout.strip() == "RUNNING", 60, "the job to run", run.path)
        shims = tmp_path / "bin"
        shims.mkdir()
        calls = tmp_path / "calls.txt"
        for tool in ("squeue", "scontrol"):
            real = subprocess.run(["which", tool], capture_output=True, text=True, check=True).stdout.strip()
            (shims / tool).write_text(f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\nexec "{real}" "$@"\n')
            (shims / tool).chmod(0o755)
        listing = run_launch("--runs-dir", str(runs_dir), "runs", env={"PATH": f"{shims}:{os.environ['PATH']}"})
        assert listing.returncode == 0, listing.stderr
        states = [line.split()[2] for line in listing.stdout.splitlines()[1:]]
        assert states == ["running", "pending", "completed", "pending", "running"], listing.stdout
        made = calls.read_text().splitlines()
        assert [c.split()[0] for c in made] == ["squeue"], made
    finally:
        subprocess.run(["scancel", running, held], capture_output=True)


@pytest.fixture(scope="module")
def slurm_wide_baseline(slurm_cluster, tmp_path_factory) -> Path:
    """One uninterrupted run on 4 SLURM nodes x 1 rank (partition `wide`)."""
    return uninterrupted(tmp_path_factory.mktemp("slurm-wide"), "w4", 3, "test-wide", 4)


def test_four_slurm_nodes_preempted_twice_mid_epoch_end_bit_identical(cluster_file, slurm_wide_baseline,
                                                                       tmp_path) -> None:
    """World size 4 on SLURM (4 nodes x 1 rank, srun mode), preempted twice mid-epoch: the
    gradient buckets, data position and every rank's RNG come back exactly."""
    steps_per_epoch = 12  # 1,437 digits, 4 ranks, batches of 32
    job = write_job(tmp_path, "w4", sleep=0.1, epochs=3)
    result = launch(cluster_file, "submit", str(job), "--cluster", "test-wide", "--nodes", "4", "--procs", "1",
                    "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    preempt_at(run_dir, (5, steps_per_epoch + 4), timeout=300, preempt=lambda: launch(cluster_file, "preempt", str(run_dir)))
    wait_for(lambda: "finished" in slurm_events(run_dir) or "failed" in slurm_events(run_dir), 400, "the end", run_dir)
    info = json.loads(launch(cluster_file, "status", str(run_dir), "--json").stdout)
    assert info["state"] == "completed" and info["restarts"] == 2 and info["world_size"] == 4, info
    preempted = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
                 if json.loads(line)["event"] == "preempted"]
    assert len(preempted) == 2 and all(0 < e["batch_in_epoch"] < steps_per_epoch for e in preempted), preempted
    assert_same_training(run_dir, slurm_wide_baseline)


def test_a_run_inside_salloc_uses_the_allocation_and_resumes_in_it(cluster_file, slurm_baseline, tmp_path) -> None:
    """`launch submit --here` under salloc: srun steps of that allocation (no job of its own),
    preempted mid-epoch, the next step resumes in the same allocation, bit for bit."""
    import sys

    job = write_job(tmp_path, "pre", sleep=0.05, epochs=4)
    runs = tmp_path / "runs"
    salloc = subprocess.Popen(
        ["salloc", "--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=2", "--partition=debug", "--time=10",
         sys.executable, "-m", "launcher.cli", "--cluster-file", str(cluster_file), "submit", str(job), "--cluster",
         "test-srun", "--procs", "1", "--runs-dir", str(runs), "--here", "--follow"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(runs.glob("pre/*/events.jsonl")), 60, "the run directory", tmp_path)
        (run_dir,) = runs.glob("pre/*")
        preempt = preempt_at(run_dir, (30,), timeout=180, preempt=lambda: launch(cluster_file, "preempt", str(run_dir)))
        assert "the --here runner" in preempt[0].stdout
        out, err = salloc.communicate(timeout=300)
    finally:
        salloc.kill()
    assert salloc.returncode == 0, err[-3000:]
    allocation = json.loads((run_dir / "slurm.json").read_text())["job_id"]
    assert f"salloc: Granted job allocation {allocation}" in err
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    names = [e["event"] for e in events]
    assert names.index("preempted") < names.index("requeued") < names.index("resumed") < names.index("finished")
    assert "queued" not in names and {e["slurm_job_id"] for e in events if e["event"] == "started"} == {allocation}
    assert [e.get("in_allocation") for e in events if e["event"] == "requeued"] == [True]
    assert_same_training(run_dir, slurm_baseline)


def kill_node(node: str, rank_pid: int) -> None:
    """What a node's death does, on the test cluster where every node is a slurmd on this machine:
    SIGKILL its slurmd, and the step daemon and rank it runs."""
    stepd = int(Path(f"/proc/{rank_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    for pid in (slurmd_pid(node), stepd, rank_pid):
        os.kill(pid, 9)


def slurmd_pid(node: str) -> int:
    """The process of `node`'s slurmd on the test cluster (tests/slurm/cluster.sh)."""
    return int((Path(os.environ.get("LAUNCH_SLURM_DIR", "/tmp/launch-slurm")) / f"slurmd-{node}.pid").read_text())


def kill_a_node_under(cluster_file: Path, job: Path, tmp_path: Path, at_step: int) -> tuple[Path, str, str]:
    """Submit `job` on 2 of partition wide's 4 nodes, and kill rank 1's node once training passed
    `at_step`: (the run, its SLURM job, the dead node)."""
    result = launch(cluster_file, "submit", str(job), "--cluster", "test-wide", "--nodes", "2", "--procs", "1",
                    "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    wait_for(lambda: progress_step(run_dir) >= at_step, 180, f"step {at_step}", run_dir)
    victim = json.loads((run_dir / "errors" / "rank-1.alive").read_text())
    kill_node(victim["host"], victim["pid"])
    return run_dir, json.loads((run_dir / "slurm.json").read_text())["job_id"], victim["host"]


def node_state(node: str) -> list[str]:
    """`node`'s state as sinfo shows it (["idle"], ["down*"], ...; [] if sinfo shows nothing)."""
    return subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True, text=True).stdout.split()[:1]


def revive_node(node: str) -> None:
    """Bring a killed node back into service for the tests after this one, as an administrator
    would: the node set DOWN, which ends at once what SLURM still had COMPLETING on it (left alone,
    slurmctld resends the job's termination only every 30-45 s; the lost-node test waits for that
    on purpose, this cleanup need not), its slurmd started again, and the node RESUMEd unless its
    slurmd's registration returned it to service first (ReturnToService=2: a RESUME then fails with
    "Invalid node state specified", which failed two tests once)."""
    subprocess.run(["scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=launch-test-revived"], check=True)
    subprocess.run(["slurmd", "-N", node], check=True)
    resume = subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], capture_output=True, text=True)
    assert resume.returncode == 0 or node_state(node) == ["idle"] or "Invalid node state" in resume.stderr, resume.stderr
    wait_for(lambda: node_state(node) == ["idle"], 240, f"{node} to be idle again", Path("."))


def test_a_lost_node_restarts_the_job_on_healthy_nodes_within_seconds(cluster_file, slurm_baseline, tmp_path) -> None:
    """A node dies (its slurmd, step daemon and rank SIGKILLed) mid-epoch: the other rank dies of the
    lost peer and the node's heartbeats stop, so the watcher stops the attempt at once (not after
    job.stall_timeout_s, 120 s), the end hook finds the node does not answer and continues
    the run as a new job that excludes it (a requeue would wait for SLURM to declare the node DOWN:
    SlurmdTimeout, 300 s), which resumes from the periodic checkpoint and ends bit for bit equal to
    the uninterrupted run."""
    job = write_job(tmp_path, "pre", sleep=0.05, epochs=4)  # job.stall_timeout_s: the default, 120 s
    job.write_text(job.read_text().replace("save_top_k = 2", "save_top_k = 2\nevery_n_train_steps = 5"))
    run_dir, old_job, node = kill_a_node_under(cluster_file, job, tmp_path, at_step=30)
    killed_at = time.time()
    try:
        wait_for(lambda: "requeued" in slurm_events(run_dir), 120, "the replacement job", run_dir)
        records = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        (requeued,) = [r for r in records if r["event"] == "requeued"]
        assert requeued["lost_nodes"] == [node] and requeued["slurm_job_id"] == old_job, requeued
        new_job = requeued["new_slurm_job_id"]
        assert json.loads((run_dir / "slurm.json").read_text())["job_id"] == new_job != old_job
        old_state = lambda: subprocess.run(["squeue", "-h", "-j", old_job, "-o", "%T"],  # noqa: E731
                                           capture_output=True, text=True).stdout.strip()
        wait_for(lambda: old_state() == "COMPLETING", 30, "the old job to wait for the dead node", run_dir)
        shown = json.loads(launch(cluster_file, "status", str(run_dir), "--json").stdout)
        assert shown["state"] in ("pending", "running") and shown["slurm_job_id"] == new_job, shown
        wait_for(lambda: slurm_events(run_dir).count("resumed") == 1, 120, "the resume", run_dir)
        resumed_at = next(r["t"] for r in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
                          if r["event"] == "resumed")
        print(f"SLURM: node {node} killed -> replacement job queued in {requeued['t'] - killed_at:.1f} s, "
              f"training again in {resumed_at - killed_at:.1f} s (job.stall_timeout_s = 120)")
        # not the stall timeout: rank 0 died of the lost peer at once and n2 went silent (issue 26)
        (stalled,) = [r for r in records if r["event"] == "stalled"]
        assert stalled["node_silent"] and stalled["rank"] == 1 and stalled["host"] == node, stalled
        assert resumed_at - killed_at < 60
        detail = subprocess.run(["scontrol", "-o", "show", "job", new_job], capture_output=True, text=True).stdout
        assert f"ExcNodeList={node} " in detail, detail
        # the node comes back while the run trains on the others (its job excludes it)
        subprocess.run(["slurmd", "-N", node], check=True)
        revived = True
        wait_for(lambda: "finished" in slurm_events(run_dir) or "failed" in slurm_events(run_dir), 300, "the end",
                 run_dir)
    finally:
        if "revived" not in locals():
            revive_node(node)
    info = json.loads(launch(cluster_file, "status", str(run_dir), "--json").stdout)
    assert info["state"] == "completed" and info["restarts"] == 1 and info["slurm_job_id"] == new_job, info
    (restarted,) = [r for r in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
                    if r["event"] == "restarted"]
    assert restarted["kind"] == "infrastructure" and restarted["cause"].startswith(f"node {node} lost at step "), restarted
    assert "rank(s) 1 died with it" in restarted["cause"], restarted
    hosts = {b.host for b in RunDir(run_dir).read_heartbeats()}
    assert node not in hosts and len(hosts) == 2, hosts  # the new attempt ran on two other nodes
    assert "restart   #1 after " in launch(cluster_file, "status", str(run_dir)).stdout
    assert_same_training(run_dir, slurm_baseline)
    # once the node is back SLURM lets the old job go; it is not requeued behind the run's back
    wait_for(lambda: old_state() in ("", "COMPLETED", "FAILED"), 240, "the old job to end", run_dir)
    wait_for(lambda: node_state(node) == ["idle"], 240, f"{node} to be idle again", run_dir)


def test_a_node_set_down_is_recorded_as_slurm_s_requeue_and_trains_again_within_30_s(cluster_file, slurm_baseline,
                                                                                     tmp_path) -> None:
    """A node of a running 2-node job stops answering (its slurmd dies; its rank lives on) and is set
    DOWN (what SLURM does after SlurmdTimeout, 300 s; an administrator here, at once): SLURM kills
    the job and requeues it itself (JobRequeue). The batch script's watcher, which SLURM's SIGTERM
    reaches, records the requeue (`by_slurm`, the down node, remembered as bad and added to the
    job's exclusions) and
    replaces SLURM's post-requeue hold (cred_expire + 1 s: 121 s here) by 2 s, so the same job
    trains again on two other nodes within 30 s, resumes from its periodic checkpoint and ends bit
    for bit equal to the uninterrupted run."""
    job = write_job(tmp_path, "pre", sleep=0.05, epochs=4)
    job.write_text(job.read_text().replace("save_top_k = 2", "save_top_k = 2\nevery_n_train_steps = 5"))
    result = launch(cluster_file, "submit", str(job), "--cluster", "test-wide", "--nodes", "2", "--procs", "1",
                    "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    job_id = json.loads((run_dir / "slurm.json").read_text())["job_id"]
    wait_for(lambda: progress_step(run_dir) >= 30, 180, "step 30", run_dir)
    alive = json.loads((run_dir / "errors" / "rank-1.alive").read_text())
    node = alive["host"]  # not the batch host
    # a node that still answered would be back in service at once (ReturnToService=2): not lost
    os.kill(slurmd_pid(node), 9)
    subprocess.run(["scontrol", "update", f"NodeName={node}", "State=DOWN", "Reason=launch-test"], check=True)
    down_at = time.time()
    try:
        wait_for(lambda: slurm_events(run_dir).count("resumed") == 1, 120, "the resume", run_dir)
        records = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        (requeued,) = [r for r in records if r["event"] == "requeued"]
        assert requeued["by_slurm"] and requeued["lost_nodes"] == [node] and requeued["slurm_job_id"] == job_id, requeued
        assert requeued["start_after_s"] == 2 and not requeued.get("seen_at_start"), requeued
        # the node is remembered as bad and the requeued job excludes it
        assert requeued["excluded_nodes"] == [node], requeued
        detail = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True).stdout
        assert f"ExcNodeList={node} " in detail, detail
        resumed_at = next(r["t"] for r in records if r["event"] == "resumed")
        print(f"SLURM: node {node} set DOWN -> requeue recorded in {requeued['t'] - down_at:.1f} s, training again "
              f"in {resumed_at - down_at:.1f} s (SLURM's own hold: 121 s)")
        assert resumed_at - down_at < 30
        started = [r for r in records if r["event"] == "started"]
        assert [s["slurm_job_id"] for s in started] == [job_id, job_id] and started[1]["slurm_restart_count"] == 1
        wait_for(lambda: "finished" in slurm_events(run_dir) or "failed" in slurm_events(run_dir), 300, "the end",
                 run_dir)
        # the rank of the node without a slurmd stopped with the others (the stop agreement)
        wait_for(lambda: not Path(f"/proc/{alive['pid']}").exists(), 60, "the rank on the node to end", run_dir)
    finally:
        subprocess.run(["scontrol", "update", f"NodeName={node}", "State=RESUME"], capture_output=True, check=False)
        revive_node(node)
    info = json.loads(launch(cluster_file, "status", str(run_dir), "--json").stdout)
    assert info["state"] == "completed" and info["bad_nodes"] == {node: "down (SLURM requeued the job)"}, info
    assert node not in {b.host for b in RunDir(run_dir).read_heartbeats()}
    assert_same_training(run_dir, slurm_baseline)


def test_cancel_of_a_job_on_a_lost_node_says_so_and_resume_works_at_once(cluster_file, digits_job, tmp_path) -> None:
    """A node dies under a job that will not restart (restart_on = "never"); `launch cancel` returns
    once nothing of the run runs, saying SLURM still shows the job COMPLETING on the lost node
    (SLURM keeps it until SlurmdTimeout), and `launch resume` works at once, on healthy nodes."""
    job = digits_job(name="lost", epochs=1000)
    job.write_text(job.read_text().replace("[job]\n", '[job]\nrestart_on = "never"\n'))
    run_dir, old_job, node = kill_a_node_under(cluster_file, job, tmp_path, at_step=5)
    try:
        cancel = launch(cluster_file, "cancel", str(run_dir))
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        assert f"still COMPLETING on {node}" in cancel.stdout and "`launch resume` works now" in cancel.stdout, cancel.stdout
        assert subprocess.run(["squeue", "-h", "-j", old_job, "-o", "%T"], capture_output=True,
                              text=True).stdout.strip() == "COMPLETING"
        info = json.loads(launch(cluster_file, "status", str(run_dir), "--json").stdout)
        assert info["state"] == "cancelled" and info["completing_on_lost_nodes"] == [node], info
        resumed = launch(cluster_file, "resume", str(run_dir))
        assert resumed.returncode == 0, resumed.stderr
        wait_for(lambda: slurm_events(run_dir).count("training_started") == 2, 120, "the resumed job to train", run_dir)
        assert json.loads((run_dir / "slurm.json").read_text())["job_id"] != old_job
        # the run remembers the node: the resumed job excludes it, and status lists it
        queued = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()
                  if json.loads(line)["event"] == "queued"]
        assert queued[-1].get("excluded_nodes") == [node], queued
        assert f"excluded  {node} (lost (did not answer when the run was cancelled))" in launch(
            cluster_file, "status", str(run_dir)).stdout
        assert node not in {json.loads(p.read_text())["host"] for p in (run_dir / "errors").glob("rank-*.alive")}
        assert launch(cluster_file, "cancel", str(run_dir)).returncode == 0
    finally:
        revive_node(node)


def test_a_node_failing_the_site_check_is_excluded_and_the_run_completes_on_the_others(cluster_file, slurm_baseline,
                                                                                         tmp_path) -> None:
    """The profile's node check (cluster.node_check) fails on the second node of the first job, and
    on it only: every rank stops before training, the end hook records the node as bad and continues
    the run as a new job that excludes it, which trains on two other nodes and ends bit for bit
    equal to the uninterrupted run; status lists the node."""
    marker = tmp_path / "bad-node"
    check = (f'f={marker}; [ -e "$f" ] || [ "$SLURM_NODEID" != 1 ] || echo "$SLURMD_NODENAME" > "$f"; '
             'if grep -qx "$SLURMD_NODENAME" "$f" 2>/dev/null; then echo "GPU 0: uncorrectable ECC errors" >&2; '
             'exit 1; fi')
    cluster_file.write_text(cluster_file.read_text() + "\n[test-checked]\n" + PROFILES.split("[test-wide]\n")[1]
                            + f"node_check = {json.dumps(['sh', '-c', check])}\n")
    job = write_job(tmp_path, "pre", sleep=0.0, epochs=4)
    result = launch(cluster_file, "submit", str(job), "--cluster", "test-checked", "--nodes", "2", "--procs", "1",
                    "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 0, result.stderr
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    wait_for(lambda: "finished" in slurm_events(run_dir) or "failed" in slurm_events(run_dir), 400, "the end", run_dir)
    bad = marker.read_text().strip()
    records = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    (bad_node,) = [r for r in records if r["event"] == "bad_node"]
    assert bad_node["host"] == bad and bad_node["reason"] == (
        f"pre-flight: site node check (cluster.node_check) `sh -c {check}` exited 1: GPU 0: uncorrectable ECC errors")
    (restarted,) = [r for r in records if r["event"] == "restarted"]
    assert restarted["kind"] == "infrastructure" and f"PreflightFailed: pre-flight check failed on {bad}: " in \
        restarted["cause"], restarted
    queued = [r for r in records if r["event"] == "queued"]
    assert len(queued) == 2 and queued[1].get("excluded_nodes") == [bad], queued
    (requeued,) = [r for r in records if r["event"] == "requeued"]
    assert requeued["new_slurm_job_id"] == queued[1]["slurm_job_id"] and requeued["lost_nodes"] == [], requeued
    detail = subprocess.run(["scontrol", "-o", "show", "job", queued[1]["slurm_job_id"]], capture_output=True,
                            text=True).stdout
    assert f"ExcNodeList={bad} " in detail, detail
    # nothing trained on the first job: its ranks stopped before the first step
    assert [r["event"] for r in records].index("first_step") > [r["event"] for r in records].index("requeued")
    info = json.loads(launch(cluster_file, "status", str(run_dir), "--json").stdout)
    assert info["state"] == "completed" and info["restarts"] == 1 and info["bad_nodes"] == {bad: bad_node["reason"]}
    hosts = {b.host for b in RunDir(run_dir).read_heartbeats()}
    assert bad not in hosts and len(hosts) == 2, hosts
    assert f"excluded  {bad} (pre-flight: site node check" in launch(cluster_file, "status", str(run_dir)).stdout
    assert_same_training(run_dir, slurm_baseline)
