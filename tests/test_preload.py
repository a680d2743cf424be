"""Ranks forked from the agent's preloaded fork server (job.preload_ranks; "auto", the default: where a
node's ranks are at least its cores;
launcher/entry/agent.py, launcher/runtime/preload.py, launcher/runtime/forked.py) train bit for bit
what ranks started as fresh interpreters train, and are what a fresh interpreter would be."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher import render
from tests.helpers.allocs import STEP_PAGES
from tests.helpers.runs import assert_same_tensors, final_state, metric_rows, submit, wait_end, write_job

pytestmark = pytest.mark.multiprocess


def test_forked_ranks_train_bit_for_bit_what_fresh_interpreters_train_and_are_set_up_as_they_are(tmp_path: Path) -> None:
    """World size 3, a DataLoader worker a rank, randomness in the model (dropout, noise) and the
    data split; one run with each way of starting ranks."""
    runs = {}
    for preload in ("true", "false"):
        probes = tmp_path / f"probes-{preload}"
        probes.mkdir()
        job = write_job(tmp_path, f"preload-{preload}", sleep=0.0, epochs=2, model="ProbedMLP",
                        extra_args=f', probe_dir = "{probes}"')
        job.write_text(job.read_text().replace("batch_size = 32 }", "batch_size = 32, num_workers = 1 }"))
        runs[preload] = submit(job, tmp_path / "runs", "--procs", "3", "--set", f"job.preload_ranks={preload}")
    for run_dir in runs.values():
        info = wait_end(run_dir)
        assert info["state"] == "completed", info
    forked, fresh = runs["true"], runs["false"]
    assert_same_tensors(final_state(forked), final_state(fresh), "weights")
    assert metric_rows(forked) == metric_rows(fresh)

    for preload in ("true", "false"):
        probes = [json.loads((tmp_path / f"probes-{preload}" / f"rank-{r}.json").read_text()) for r in range(3)]
        assert all((tmp_path / f"probes-{preload}" / f"exit-{r}").is_file() for r in range(3)), preload
        for p in probes:
            assert p["lightning_rank"] == p["rank"] and p["torchmetrics_rank"] == p["local_rank"], p
            assert str(p["threads"]) == p["omp"] and p["start_method"] == "fork", p  # DataLoader workers by fork
            assert p["argv"][0].endswith("launcher/runtime/__main__.py") and p["argv"][1] == str(runs[preload]), p
            # job.tuned_allocator, in effect in the forked rank as in the fresh one: a step's freed
            # memory is reused, not faulted back in (tests/test_allocator.py has glibc's defaults)
            assert p["malloc"] == render.TUNED_ALLOCATOR and p["step_faults"] < STEP_PAGES, p
        from_server = ["multiprocessing.forkserver" in p["parent"] for p in probes]
        assert from_server == [preload == "true"] * 3, [p["parent"] for p in probes]
    assert len({p["pid"] for p in probes}) == 3


def test_the_fork_server_s_imports_leave_cuda_alone_and_start_no_thread() -> None:
    """A child forked after CUDA was initialised cannot use CUDA, and a fork copies only the thread
    that forks: the server's preload (launcher/runtime/preload.py), run in a fresh interpreter with
    CUDA's device query watched, must ask for no device and start no Python thread (the idle BLAS
    worker pools numpy and scipy start at import are native and stop around a fork, as every
    DataLoader worker's fork relies on). It also ignores the signals that stop a run, and remembers
    the dispositions it was started with."""
    import subprocess
    import sys

    probe = """
import signal, threading, torch
asked = []
count = torch._C._cuda_getDeviceCount
torch._C._cuda_getDeviceCount = lambda *a: asked.append(1) or count(*a)
from launcher.runtime import preload
threads = threading.active_count()
ignored = all(signal.getsignal(s) is signal.SIG_IGN for s in preload.STOP_SIGNALS)
print(len(asked), torch.cuda.is_initialized(), threads, ignored, preload.INHERITED[signal.SIGTERM] is signal.SIG_DFL)
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "False", "1", "True", "True"], out.stdout + out.stderr


def test_a_cancelled_run_of_forked_ranks_ends_as_soon_as_they_saved(tmp_path: Path) -> None:
    """`launch cancel`: torchrun's agent, signalled, closes its workers instead of polling them; a
    forked rank that saved and returned must not then wait for the agent's poll until the close
    SIGKILLs it (30 s later): the run is cancelled within seconds of the save, its checkpoint kept."""
    from tests.helpers.launch import run_launch
    from tests.helpers.runs import events, progress_step, wait_for

    run_dir = submit(write_job(tmp_path, "cancelled", sleep=0.05, epochs=30), tmp_path / "runs", "--procs", "3",
                     "--set", "job.preload_ranks=true")
    wait_for(lambda: progress_step(run_dir) >= 5, 120, "training", run_dir)
    cancel = run_launch("cancel", str(run_dir))
    assert cancel.returncode == 0 and "cancelled" in cancel.stdout, cancel.stdout + cancel.stderr
    by_name = {e["event"]: e for e in events(run_dir)}
    assert by_name["preempted"]["signal"] == "SIGTERM" and (run_dir / "checkpoints" / "preempt.ckpt").is_file()
    assert by_name["cancelled"]["t"] - by_name["preempted"]["t"] < 10, (by_name["preempted"], by_name["cancelled"])


@pytest.mark.parametrize(("setting", "argv", "cores", "forked"), [
    ("auto", ["--nnodes", "1", "--nproc-per-node", "4"], 2, True),     # a laptop, a CPU node, CI
    ("auto", ["--nproc-per-node=2"], 2, True),                         # as many ranks as cores
    ("auto", ["--nproc_per_node", "8"], 96, False),                    # a GPU node: cores to spare
    ("auto", ["--nproc-per-node", "1"], 2, False),                     # agent and rank: one core each
    ("auto", ["--nproc-per-node", "gpu"], 1, False),                   # a word: not counted, not forked
    ("auto", ["--nnodes", "1"], 1, False),
    ("1", ["--nproc-per-node", "1"], 96, True),                        # job.preload_ranks = true
    ("0", ["--nproc-per-node", "8"], 1, False),                        # job.preload_ranks = false
])
def test_auto_forks_the_ranks_where_the_node_s_ranks_are_at_least_its_cores(setting, argv, cores, forked) -> None:
    """job.preload_ranks = "auto": forking saves start-up where the agent and its ranks would import
    on more processes than the node has cores, and nothing where cores outnumber them."""
    from launcher.entry.agent import preload_wanted

    assert preload_wanted(setting, argv, cores) is forked


def test_every_torchrun_rank_environment_says_how_ranks_start() -> None:
    """The default renders "auto" (the agent decides on the node, from the cores it may use); true
    and false render what they say; srun mode starts every rank itself and renders none."""
    from tests.helpers.launch import REPO, rendered_rank_env

    job = REPO / "jobs" / "digits.toml"
    assert rendered_rank_env(job, "torchrun")["LAUNCH_PRELOAD_RANKS"] == "auto"
    assert "LAUNCH_PRELOAD_RANKS" not in rendered_rank_env(job, "srun")
    for value, rendered in (("auto", "auto"), ("true", "1"), ("false", "0")):
        assert rendered_rank_env(job, "torchrun", f"job.preload_ranks={value}")["LAUNCH_PRELOAD_RANKS"] == rendered
