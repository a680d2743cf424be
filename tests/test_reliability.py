"""Failing safely: dead and hung ranks, torn writes, a full disk, injection, concurrent runs, secrets.

Real runs on the local backend (torchrun, 2 processes over gloo); the SLURM side is in test_slurm.py.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

from launcher.backends.local import processes_of
from launcher.entry import torchrun_compat
from launcher.rundir import RunDir
from tests.helpers.launch import REPO, run_launch
from tests.helpers.runs import kill_every_process, rank_pid
from tests.helpers.values import NASTY, SECRETS

pytestmark = pytest.mark.multiprocess

JOB = """
[job]
name = "{name}"
seed = 5
collective_timeout_s = {timeout}
restart_on = "never"  # these tests are about how a failure is seen and named; restarts: test_preemption.py

[model]
class_path = "tests.helpers.modules.{model}"
init_args = {{ in_features = 64, hidden = 32, lr = 0.01{args} }}

[data]
class_path = "digits"
init_args = {{ data_dir = "{data}", batch_size = 32 }}

[trainer]
max_epochs = {epochs}
max_steps = {steps}
log_every_n_steps = 5
enable_progress_bar = false
num_sanity_val_steps = 0
{extra}
"""


def write_job(tmp: Path, name: str, model: str = "PreemptableMLP", args: str = "", epochs: int = 100,
              steps: int = -1, timeout: int = 600, extra: str = "") -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(JOB.format(name=name, model=model, args=args, data=tmp / "data", epochs=epochs, steps=steps,
                               timeout=timeout, extra=extra))
    return path


def submit(job: Path, runs: Path, *extra: str, env: dict | None = None) -> Path:
    result = run_launch("submit", str(job), "--runs-dir", str(runs), *extra, env=env)
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


def status(run_dir: Path) -> dict:
    result = run_launch("status", str(run_dir), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def wait_for(predicate, timeout: float, what: str, run_dir: Path) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            console = run_dir / "console.log"
            raise AssertionError(f"timed out waiting for {what}\n" + (console.read_text()[-3000:] if console.exists() else ""))
        time.sleep(0.1)


def step_of(run_dir: Path) -> int:
    return RunDir(run_dir).read_progress().get("global_step", -1)


def ended(run_dir: Path) -> bool:
    return any(e["event"] in ("finished", "failed", "cancelled") for e in RunDir(run_dir).read_events())


def wait_for_failure(run_dir: Path, within: float = 60) -> tuple[float, dict]:
    """Seconds from now until the run records its end (at most `within`), and its status then."""
    start = time.monotonic()
    wait_for(lambda: ended(run_dir), within, "the job to fail", run_dir)
    return time.monotonic() - start, status(run_dir)


# --------------------------------------------------------------------------- dead and hung ranks


def test_a_killed_rank_fails_the_job_within_seconds_and_is_named(tmp_path: Path) -> None:
    run_dir = submit(write_job(tmp_path, "killed", args=", step_sleep = 0.1"), tmp_path / "runs")
    wait_for(lambda: step_of(run_dir) >= 5, 120, "training", run_dir)
    os.kill(rank_pid(run_dir, 1), signal.SIGKILL)
    took, info = wait_for_failure(run_dir)
    print(f"SIGKILL of rank 1 -> job failed in {took:.1f} s")
    assert info["state"] == "failed" and info["failed_rank"] == 1, info
    assert "rank 1 (" in info["error"] and "without a Python error" in info["error"], info["error"]
    assert not processes_of(RunDir(run_dir)), "processes of the failed run are left behind"


def test_a_hung_rank_is_ended_by_the_collective_timeout_and_its_stack_is_logged(tmp_path: Path) -> None:
    job = write_job(tmp_path, "hung", model="HangingMLP", timeout=8)
    run_dir = submit(job, tmp_path / "runs")
    log = run_dir / "logs" / "rank-1.log"
    wait_for(lambda: log.exists() and "rank 1 hangs now" in log.read_text(), 120, "the hang", run_dir)
    took, info = wait_for_failure(run_dir)
    print(f"rank 1 hung -> job failed in {took:.1f} s (collective timeout 8 s)")
    assert info["state"] == "failed" and info["failed_rank"] == 1, info
    # Named hung only when rank 0's own error was its collective giving up.
    assert info["error"].startswith("rank 1 (") and ": Hung: stopped responding: rank 0 waited" in info["error"], info
    text = log.read_text()
    assert "Timeout (0:00:" in text and "in training_step" in text, text[-2000:]  # where rank 1 was stuck
    # torchrun stopped the hung rank FAILED_PEER_GRACE_S after its SIGTERM, not after its own 30 s
    console = (run_dir / "console.log").read_text()
    # (torchrun's words for workers started as commands, or torch.multiprocessing's for forked ones)
    at = {what: datetime.strptime(re.search(rf"^\w\d{{4}} (\S+) .*({what})", console, re.M).group(1), "%H:%M:%S.%f")
          for what in ("closing signal SIGTERM|via signal SIGTERM", "forcefully exiting via (9|SIGKILL)")}
    waited = (at["forcefully exiting via (9|SIGKILL)"] - at["closing signal SIGTERM|via signal SIGTERM"]).total_seconds()
    assert torchrun_compat.FAILED_PEER_GRACE_S <= waited < torchrun_compat.FAILED_PEER_GRACE_S + 5, console[-3000:]


def test_torchrun_s_agent_keeps_its_timeout_for_a_signal_and_shortens_it_after_a_failure(monkeypatch) -> None:
    """launcher/entry/torchrun_compat.py, on torch's own process context with real workers, one of
    which ignores SIGTERM: when another worker fails, torchrun's poll closes the context and the
    stubborn one is SIGKILLed after the grace (torch's own: 30 s); a close for a signal to the agent
    (a preemption: its ranks are saving) waits the whole timeout it is given."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, start_processes
    from torch.distributed.elastic.multiprocessing.api import PContext

    from launcher.runtime.signals import STACK_DUMP_AFTER_S

    assert STACK_DUMP_AFTER_S < torchrun_compat.FAILED_PEER_GRACE_S - 1  # a hung rank's stacks are dumped first
    monkeypatch.setattr(torchrun_compat, "FAILED_PEER_GRACE_S", 1)
    monkeypatch.setattr(PContext, "close", PContext.close)  # torch's, back after the test
    assert not torchrun_compat.shorten_the_shutdown_after_a_failure("2.15.0")  # not written for it: torchrun's own
    assert PContext.close.__module__.startswith("torch.")
    assert torchrun_compat.shorten_the_shutdown_after_a_failure() and torchrun_compat.shorten_the_shutdown_after_a_failure()
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    failing = "import time, sys; time.sleep(1.5); sys.exit(3)"
    took = {}
    for case in ("failure", "signal"):
        workers = start_processes(f"grace-{case}", sys.executable, {0: ("-c", stubborn), 1: ("-c", failing)},
                                  {0: {}, 1: {}}, DefaultLogsSpecs(log_dir=None))
        started = time.monotonic()
        if case == "failure":  # what torchrun's agent does: wait until a worker failed, then close
            result = workers.wait(timeout=60, period=0.1)
            assert result is not None and result.failures[1].exitcode == 3, result
            assert result.failures[0].exitcode == -signal.SIGKILL, result
            took[case] = time.monotonic() - started - 1.5
        else:
            time.sleep(1.0)  # the stubborn worker has set its SIGTERM aside
            started = time.monotonic()
            workers.close(signal.SIGTERM, 3)
            took[case] = time.monotonic() - started
    assert 0.9 <= took["failure"] < 3 and 3 <= took["signal"] < 4.5, took


def test_a_hang_in_the_job_stops_its_restarts_and_a_hang_that_passes_restarts_and_completes(tmp_path: Path) -> None:
    """Issue 28: rank 1 hangs at the same step in every attempt (no checkpoint before it): a
    restart repeats it, so the run fails after 2 attempts naming the loop, not after 3 restarts.
    The same model hanging in its first attempt only restarts and completes. (Run side by side.)"""
    runs = {}
    for name, args in (("loop", ""), ("once", f', once_marker = "{tmp_path / "hung-once"}"')):
        job = write_job(tmp_path, name, model="HangingMLP", args=args, timeout=8, steps=6)
        job.write_text(job.read_text().replace('restart_on = "never"', 'restart_on = "infrastructure"'))
        runs[name] = submit(job, tmp_path / "runs")
    _, looped = wait_for_failure(runs["loop"], within=240)
    wait_for(lambda: ended(runs["once"]), 240, "the once-hung run to end", runs["once"])
    recovered = status(runs["once"])
    names = [e["event"] for e in RunDir(runs["loop"]).read_events()]
    assert names.count("started") == 2 and names.count("restarted") == 1 and names[-1] == "failed", names
    assert looped["state"] == "failed" and looped["error"].startswith(
        "rank 1 hung at step 2 in 2 attempts in a row: a hang in the job, not in the cluster; restarts stopped"), looped
    assert recovered["state"] == "completed" and recovered["global_step"] == 6 and recovered["restarts"] == 1, recovered


# --------------------------------------------------------------------------- torn writes


def _rewrite_forever(path: str, size: int) -> None:
    from launcher.rundir import atomic_write_bytes

    for i in range(10**9):
        atomic_write_bytes(Path(path), bytes([i % 251]) * size)


def test_kill_during_atomic_writes_leaves_a_whole_file(tmp_path: Path) -> None:
    """A writer SIGKILLed at random moments: the file is always one complete version."""
    target = tmp_path / "config.toml"
    target.write_bytes(b"\x00" * 300_000)
    ctx = multiprocessing.get_context("spawn")
    for delay in (0.05, 0.11, 0.17, 0.23, 0.31):
        writer = ctx.Process(target=_rewrite_forever, args=(str(target), 300_000))
        writer.start()
        time.sleep(delay)
        os.kill(writer.pid, signal.SIGKILL)
        writer.join()
        data = target.read_bytes()
        assert len(data) == 300_000 and data == data[:1] * len(data), "a torn file"


def test_a_crashed_run_with_torn_records_is_reported_and_resumes(tmp_path: Path) -> None:
    """The machine dies mid-run: every process SIGKILLed, a record half-written, a temp file left."""
    job = write_job(tmp_path, "crash", args=", step_sleep = 0.05", epochs=3,
                    extra='[checkpoint]\nevery_n_train_steps = 10\nsave_top_k = -1\nsave_last = false\nfilename = "s-{step}"')
    run_dir = submit(job, tmp_path / "runs")
    run = RunDir(run_dir)
    # the periodic full-state checkpoint (resume.ckpt) replaced once: at step 10, then 20
    wait_for(lambda: run.periodic_checkpoint.exists() and step_of(run_dir) >= 22, 120, "two checkpoints", run_dir)
    kill_every_process(run_dir)
    # what a kill in the middle of writing would leave: a torn event line, a partial temp file
    with open(run.events, "ab") as fh:
        fh.write(b'{"event": "preempted", "time": "2026-')
    (run_dir / ".config.toml.tmp-999-dead").write_text("[job]\nname = ")
    info = status(run_dir)
    assert info["state"] == "failed" and "gone without recording" in info["error"], info
    assert run.read_events()[-1]["event"] != "preempted"
    result = run_launch("resume", str(run_dir), "--runs-dir", str(tmp_path / "runs"), "--follow")
    assert result.returncode == 0, result.stderr[-3000:]
    info = status(run_dir)
    assert info["state"] == "completed" and info["global_step"] == 3 * 23, info
    resumed = [e for e in run.read_events() if e["event"] == "training_started"][-1]
    assert resumed["resume_from"] == "resume.ckpt", resumed


# --------------------------------------------------------------------------- disk full


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 48 MB tmpfs: a filesystem that really runs out of space."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        if os.geteuid() == 0:
            pytest.fail(f"cannot mount a tmpfs as root: {done.stderr}")
        pytest.skip("mounting a small filesystem needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_while_saving_keeps_the_previous_checkpoint_and_says_so(tmp_path: Path, small_disk: Path) -> None:
    # ~4 MB per checkpoint (a ballast buffer); save_top_k=1 would delete the old one after a good save
    job = write_job(tmp_path, "full", model="BigPreemptableMLP", args=", step_sleep = 0.3, ballast_mb = 4",
                    steps=60, extra="[checkpoint]\nevery_n_train_steps = 10\nsave_last = false")
    run_dir = submit(job, small_disk / "runs")
    run = RunDir(run_dir)
    first = run.periodic_checkpoint
    wait_for(first.exists, 120, "the first periodic checkpoint (step 10)", run_dir)
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - 1_500_000))  # room for logs, not for a checkpoint
    wait_for(lambda: ended(run_dir), 120, "the job to fail", run_dir)
    info = status(run_dir)
    assert info["state"] == "failed" and info["failed_rank"] == 0, info
    assert "No space left on device while writing checkpoint" in info["error"], info["error"]
    assert "previous checkpoints" in info["error"]
    assert [p.name for p in run.checkpoints.iterdir()] == [first.name], "a partial checkpoint was left behind"
    assert torch.load(first, map_location="cpu", weights_only=False)["global_step"] == 10
    (small_disk / "filler").unlink()
    result = run_launch("resume", str(run_dir), "--runs-dir", str(small_disk / "runs"), "--follow")
    assert result.returncode == 0, result.stderr[-3000:]
    assert status(run_dir)["global_step"] == 60


# --------------------------------------------------------------------------- injection



def test_nasty_paths_env_and_set_values_reach_the_job_exactly(tmp_path: Path) -> None:
    """Through `launch submit`, and again by running the rendered command.txt with bash."""
    cluster = tmp_path / "cluster.toml"
    cluster.write_text(f'[weird]\nbackend = "local"\ngpus_per_node = 0\nenv = {{ WEIRD = {json.dumps(NASTY)} }}\n')
    report = tmp_path / f"report {NASTY}"
    job = write_job(tmp_path, "inject", model="EchoMLP", steps=2, args=f", note = 'x', report_dir = {json.dumps(str(report))}")
    runs = tmp_path / f"runs {NASTY}"
    run_dir = submit(job, runs, "--cluster-file", str(cluster), "--cluster", "weird", "--set",
                     f"model.init_args.note={NASTY}")
    wait_for(lambda: ended(run_dir), 120, "the run", run_dir)
    assert status(run_dir)["state"] == "completed"

    def check_reports() -> None:
        for rank in (0, 1):
            seen = json.loads((report / f"rank-{rank}.json").read_text())
            assert seen["note"] == NASTY and seen["weird"] == NASTY and seen["run_dir"] == str(run_dir), seen

    check_reports()
    shutil.rmtree(report)
    script = run_dir / "command.txt"
    done = subprocess.run(["bash", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    check_reports()
    for place in (tmp_path, REPO, Path.cwd()):
        assert not (place / "PWNED").exists() and not (place / "PWNED2").exists()


# --------------------------------------------------------------------------- concurrency


def _create(args: tuple[str, int]) -> str:
    runs, _ = args
    return str(RunDir.create(Path(runs), "same").path)


def test_concurrent_submissions_get_distinct_run_directories(tmp_path: Path) -> None:
    with multiprocessing.get_context("spawn").Pool(8) as pool:
        made = pool.map(_create, [(str(tmp_path / "many"), i) for i in range(64)])
    assert len(set(made)) == 64
    # and two real submissions of the same job at the same moment
    job = write_job(tmp_path, "twin", model="MLP", steps=3)
    cmd = [sys.executable, "-m", "launcher.cli", "submit", str(job), "--runs-dir", str(tmp_path / "runs"), "--follow"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAUNCH_")}
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    dirs = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(dirs) == 2
    for d in dirs:
        assert status(Path(d))["state"] == "completed"


def test_resume_of_a_running_run_is_refused(tmp_path: Path) -> None:
    run_dir = submit(write_job(tmp_path, "busy", args=", step_sleep = 0.1"), tmp_path / "runs")
    wait_for(lambda: step_of(run_dir) >= 2, 120, "training", run_dir)
    result = run_launch("resume", str(run_dir))
    assert result.returncode == 2 and "still running" in result.stderr, result.stderr
    # also when only orphaned ranks are left (the supervisor was killed)
    os.kill(int(RunDir(run_dir).supervisor_pid.read_text()), signal.SIGKILL)
    time.sleep(0.5)
    result = run_launch("resume", str(run_dir))
    assert result.returncode == 2 and "still" in result.stderr, result.stderr
    for pid in processes_of(RunDir(run_dir)):
        os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- secrets



def test_secrets_in_the_environment_reach_the_job_but_no_file(tmp_path: Path) -> None:
    report = tmp_path / "report"
    job = write_job(tmp_path, "secret", model="EchoMLP", steps=2, args=f", note = 'n', report_dir = '{report}'")
    run_dir = submit(job, tmp_path / "runs", env=SECRETS)
    wait_for(lambda: ended(run_dir), 120, "the run", run_dir)
    assert status(run_dir)["state"] == "completed"
    assert json.loads((report / "rank-0.json").read_text())["token"] == SECRETS["MY_API_TOKEN"]
    rendered = run_launch("render", str(job), env=SECRETS).stdout
    for path in [p for p in run_dir.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, f"{name}'s value is in {path}"
    for value in SECRETS.values():
        assert value not in rendered
