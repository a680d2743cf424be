"""Job files, cluster profiles, precedence and every user error path (pure, fast)."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from launcher import config
from launcher.config import ConfigError, LaunchError, Request
from tests.helpers.launch import REPO, run_launch

JOB = """
[job]
name = "t"

[model]
class_path = "mlp"

[data]
class_path = "digits"
"""

CLUSTER = """
[local]
backend = "local"
gpus_per_node = 0

[gpu8]
backend = "slurm"
partition = "gpu"
gpus_per_node = 8
cpus_per_node = 64
mem_per_node = "512G"
max_time = "2-00:00:00"
max_nodes = 16
"""


def resolve(write, job: str = JOB, cluster_text: str = CLUSTER, **kwargs) -> config.JobConfig:
    job_path = write("job.toml", job)
    cluster_path = write("cluster.toml", cluster_text)
    return config.resolve(Request(job_file=str(job_path), cluster_file=str(cluster_path), **kwargs))


@pytest.mark.parametrize("job_file", sorted((REPO / "jobs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_job_parses_and_renders(job_file: Path, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    cfg = config.resolve(Request(job_file=str(job_file), cluster_file=str(REPO / "cluster.toml"), gpus=0))
    assert cfg.world_size == 2
    result = run_launch("render", str(job_file), "--gpus", "0")
    assert result.returncode == 0, result.stderr
    assert "launcher.entry.agent" in result.stdout and "--nproc-per-node 2" in result.stdout


def test_defaults_give_two_cpu_processes_on_a_cpu_only_profile(write) -> None:
    cfg = resolve(write)
    assert (cfg.resources.nodes, cfg.resources.gpus_per_node, cfg.procs_per_node) == (1, 0, 2)
    assert cfg.cluster.backend == "local" and cfg.run.profile == "local"


def test_precedence_flags_and_set_over_job_over_profile(write) -> None:
    job = JOB + "\n[resources]\ngpus_per_node = 4\nnodes = 2\n[trainer]\nmax_epochs = 3\n"
    assert resolve(write, job=job, cluster="gpu8").resources.gpus_per_node == 4
    cfg = resolve(write, job=job, cluster="gpu8")
    assert cfg.resources.gpus_per_node == 4 and cfg.resources.nodes == 2 and cfg.trainer.max_epochs == 3
    cfg = resolve(write, cluster="gpu8")
    assert cfg.resources.gpus_per_node == 8  # from the profile
    cfg = resolve(write, job=job, cluster="gpu8", gpus=2, nodes=4,
                  overrides=("trainer.max_epochs=9", "model.init_args.lr=0.5", "cluster.partition=debug"))
    assert (cfg.resources.gpus_per_node, cfg.resources.nodes, cfg.trainer.max_epochs) == (2, 4, 9)
    assert cfg.model.init_args == {"lr": 0.5} and cfg.cluster.partition == "debug"
    assert cfg.job.preemptible is True
    assert resolve(write, overrides=("job.preemptible=false",)).job.preemptible is False


def test_set_values_are_toml_typed_else_strings() -> None:
    assert config.parse_override("trainer.max_epochs=3") == (["trainer", "max_epochs"], 3)
    assert config.parse_override("model.init_args.lr=1e-3") == (["model", "init_args", "lr"], 1e-3)
    assert config.parse_override("trainer.deterministic=true") == (["trainer", "deterministic"], True)
    assert config.parse_override("job.name=my run") == (["job", "name"], "my run")
    assert config.parse_override("resources.time=12:00:00") == (["resources", "time"], "12:00:00")
    assert config.parse_override('data.init_args.data_dir="/x y"') == (["data", "init_args", "data_dir"], "/x y")


ERRORS = [
    # (job text, overrides/flags, expected source suffix, key, fragment)
    (JOB.replace("[job]", "[job]\nnmae = 'x'"), {}, "job.toml", "job.nmae", "did you mean 'name'"),
    (JOB + "\n[trainer]\nmax_epoch = 3\n", {}, "job.toml", "trainer.max_epoch", "did you mean 'max_epochs'"),
    (JOB + "\n[trainer]\nmax_epochs = 'ten'\n", {}, "job.toml", "trainer.max_epochs", "expected integer"),
    (JOB + "\n[trainer]\nprecision = 'fp8'\n", {}, "job.toml", "trainer.precision", "allowed: '64-true'"),
    (JOB + "\n[trainer]\nlimit_val_batches = 1.5\n", {}, "job.toml", "trainer.limit_val_batches", "between 0.0 and 1.0"),
    (JOB + "\n[resources]\nnodes = 0\n", {}, "job.toml", "resources.nodes", "at least 1"),
    (JOB + "\n[resources]\nprocs_per_node = -2\n", {}, "job.toml", "resources.procs_per_node", "at least 1"),
    (JOB + "\n[resources]\ngpus_per_node = -1\n", {}, "job.toml", "resources.gpus_per_node", "0 or more"),
    (JOB + "\n[resources]\ngpus_per_node = 16\n", {"cluster": "gpu8"}, "job.toml", "resources.gpus_per_node",
     "16 GPUs per node requested; profile 'gpu8' nodes have 8"),
    (JOB, {"cluster": "gpu8", "gpus": 9}, "--gpus", "resources.gpus_per_node", "profile 'gpu8' nodes have 8"),
    (JOB, {"gpus": 1}, "--gpus", "resources.gpus_per_node", "1 GPUs per node requested; profile 'local' nodes have 0"),
    (JOB + "\n[resources]\ntime = '3-00:00:00'\n", {"cluster": "gpu8"}, "job.toml", "resources.time", "at most 2-00:00:00"),
    (JOB + "\n[resources]\ntime = 'soon'\n", {}, "job.toml", "resources.time", "is not a time"),
    (JOB + "\n[resources]\nmem = '1T'\n", {"cluster": "gpu8"}, "job.toml", "resources.mem", "nodes have 512G"),
    (JOB + "\n[resources]\ncpus_per_task = 16\n", {"cluster": "gpu8"}, "job.toml", "resources.cpus_per_task",
     "16 CPUs x 8 tasks per node exceeds the 64 CPUs"),
    (JOB, {"cluster": "gpu8", "nodes": 17}, "--nodes", "resources.nodes", "allows at most 16"),
    (JOB, {"cluster": "gpu9"}, "cluster.toml", "gpu9", "did you mean 'gpu8'"),
    (JOB, {"overrides": ("trainer.max_epochs",)}, "--set", "trainer.max_epochs", "expected KEY.PATH=VALUE"),
    (JOB, {"overrides": ("trainer.epochs=3",)}, "--set", "trainer.epochs", "unknown key"),
    (JOB, {"overrides": ("trainer.max_epochs=three",)}, "--set", "trainer.max_epochs", "expected integer"),
    (JOB.replace('name = "t"', 'name = "a b"'), {}, "job.toml", "job.name", "no spaces"),
    (JOB.replace('name = "t"\n', ""), {}, "job.toml", "job.name", "missing required key"),
    (JOB.replace('"mlp"', '"mlpp"'), {}, "job.toml", "model.class_path", "neither a registered name"),
    (JOB.replace('"mlp"', '"models.mlp.MPL"'), {}, "job.toml", "model.class_path", "did you mean 'MLP'"),
    (JOB.replace('"digits"', '"no_such_pkg.Data"'), {}, "job.toml", "data.class_path", "no module named 'no_such_pkg'"),
    (JOB + "\n[checkpoint]\nsave_top_k = 3\n", {}, "job.toml", "checkpoint.save_top_k", "needs checkpoint.monitor"),
    (JOB + "\n[checkpoint]\nmode = 'best'\n", {}, "job.toml", "checkpoint.mode", "allowed: 'min', 'max'"),
    (JOB + "\n[resources]\nprocs_per_node = 3\ngpus_per_node = 2\n", {"cluster": "gpu8"}, "job.toml",
     "resources.procs_per_node", "one process per GPU"),
    (JOB + "\n[run]\nid = 'x'\n", {}, "job.toml", "run", "filled in by launch"),
    ("[job\nname='x'", {}, "job.toml", "", "invalid TOML"),
    (JOB + "\n[trainer]\ndevices = 4\n", {}, "job.toml", "trainer.devices", "is set by launch: set resources.gpus_per_node"),
    (JOB + "\n[trainer]\nnum_nodes = 4\n", {}, "job.toml", "trainer.num_nodes", "set resources.nodes (--nodes)"),
    ("model = 3\n" + JOB, {}, "job.toml", "", "invalid TOML"),
    (JOB.replace("[model]", "[model]\ninit_args = 3"), {}, "job.toml", "model.init_args", "expected a table"),
]


@pytest.mark.parametrize("job,kwargs,source,key,fragment", ERRORS, ids=[e[3] or e[4] for e in ERRORS])
def test_user_errors_name_file_key_and_what_is_allowed(write, job, kwargs, source, key, fragment) -> None:
    with pytest.raises(ConfigError) as info:
        resolve(write, job=job, **kwargs)
    err = info.value
    assert err.source.endswith(source), str(err)
    assert err.key == key, str(err)
    assert fragment in err.message, str(err)
    assert "\n" not in str(err)


PROFILE_ERRORS = [
    ("[local]\nbackend = 'k8s'\n", "local.backend", "allowed: 'local', 'slurm'"),
    ("[local]\ngpus_per_nod = 2\n", "local.gpus_per_nod", "did you mean 'gpus_per_node'"),
    ("[local]\ngpus_per_node = 'many'\n", "local.gpus_per_node", "expected integer or 'auto'"),
    ("local = 3\n", "local", "expected a [profile] table"),
    ("[s]\nbackend = 'slurm'\n", "cluster.partition", "needs a partition"),
    ("[local]\nsignal_grace_s = 0\n", "cluster.signal_grace_s", "at least 1 second"),
    ("[local]\nsbatch_extra = [\"--exclusive=1\\n#SBATCH --x\"]\n", "cluster.sbatch_extra[0]", "one sbatch option"),
    ("[local]\nsetup = [\"module load a\\nrm -rf x\"]\n", "cluster.setup[0]", "no newlines"),
    ("[local]\nenv = { 'BAD NAME' = 'x' }\n", "cluster.env.BAD NAME", "not a valid environment variable"),
]


@pytest.mark.parametrize("cluster,key,fragment", PROFILE_ERRORS, ids=[e[1] for e in PROFILE_ERRORS])
def test_profile_errors_name_the_cluster_file(write, cluster, key, fragment) -> None:
    name = "s" if cluster.startswith("[s]") else "local"
    with pytest.raises(ConfigError) as info:
        resolve(write, cluster_text=cluster, cluster=name)
    assert "cluster.toml" in info.value.source and info.value.key == key and fragment in info.value.message


def test_time_and_memory_units() -> None:
    assert config.parse_time_minutes("90", "f", "k") == 90
    assert config.parse_time_minutes("01:30:00", "f", "k") == 90
    assert config.parse_time_minutes("1-02:00:00", "f", "k") == 1560
    assert config.parse_time_minutes("00:00:30", "f", "k") == 1
    assert config.parse_mem_mb("64G", "f", "k") == 65536 and config.parse_mem_mb("500M", "f", "k") == 500
    with pytest.raises(ConfigError):
        config.parse_mem_mb("lots", "f", "k")


def test_resolved_config_round_trips_through_the_run_directory(write, tmp_path) -> None:
    cfg = resolve(write, overrides=("model.init_args.lr=0.25", "trainer.max_epochs=2"))
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, id="r1", dir=str(tmp_path)))
    (tmp_path / "config.toml").write_text(config.dumps(cfg))
    assert config.load_resolved(tmp_path / "config.toml") == cfg


def test_bad_job_file_is_one_line_exit_2_without_traceback(write) -> None:
    bad = write("bad.toml", JOB + "\n[trainer]\nmax_epoch = 3\n")
    for command in ("submit", "render"):
        result = run_launch(command, str(bad))
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert "bad.toml: trainer.max_epoch: unknown key; did you mean 'max_epochs'?" in result.stderr
    missing = run_launch("submit", "no/such/job.toml")
    assert missing.returncode == 2 and "no/such/job.toml: file not found" in missing.stderr


def test_fast_commands_do_not_import_torch(write, tmp_path) -> None:
    job = write("job.toml", JOB)
    code = (
        "import sys; from launcher.cli import main; "
        f"main(['--runs-dir', {str(tmp_path)!r}, 'render', {str(job)!r}]); main(['--runs-dir', {str(tmp_path)!r}, 'runs']); "
        "heavy = [m for m in ('torch', 'pytorch_lightning', 'lightning', 'torchvision', 'starlette', 'uvicorn', 'plotly') "
        "if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_unknown_run_is_a_user_error(tmp_path) -> None:
    result = run_launch("--runs-dir", str(tmp_path), "status", "nope")
    assert result.returncode == 2 and "nope: no such run" in result.stderr
    with pytest.raises(LaunchError):
        from launcher.rundir import find_run

        find_run("nope", tmp_path)


def test_here_needs_an_allocation_that_fits_the_job(write, tmp_path) -> None:
    """`launch submit --here`: refused outside an allocation, or when the job does not fit it; a
    rank's CPUs default to the allocation's per node (SLURM_JOB_CPUS_PER_NODE), not the profile's."""
    import unittest.mock

    from launcher.slurm_env import current_allocation
    from launcher.submission import fit_allocation

    job = write("job.toml", '[job]\nname = "h"\n[model]\nclass_path = "mlp"\n[data]\nclass_path = "digits"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = run_launch("submit", str(job), "--here", env=env)
    assert out.returncode == 2 and "--here runs inside a SLURM allocation" in out.stderr and out.stderr.count("\n") == 1

    cluster = write("cluster.toml", '[s]\nbackend = "slurm"\npartition = "p"\ngpus_per_node = 8\ncpus_per_node = 64\n')
    cfg = config.resolve(config.Request(job_file=str(job), cluster_file=str(cluster), cluster="s", nodes=2, gpus=4))
    slurm = {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4", "SLURM_CPUS_ON_NODE": "64",
             "SLURM_JOB_CPUS_PER_NODE": "16(x2)"}
    with unittest.mock.patch.dict(os.environ, slurm, clear=True):
        alloc = current_allocation()
    assert alloc is not None
    assert (alloc.nodes, alloc.gpus_per_node, alloc.cpus_per_node) == (2, 4, 16)
    assert fit_allocation(cfg, alloc).resources.cpus_per_task == 4  # 16 CPUs shared by 4 ranks
    for change, words in ((dict(nodes=3), "asks 3 nodes; allocation 7 has 2"), (dict(gpus_per_node=8), "8 GPUs per node"),
                          (dict(cpus_per_task=5), "4 task(s) x 5 CPUs")):
        wide = dataclasses.replace(cfg, resources=dataclasses.replace(cfg.resources, **change))
        with pytest.raises(LaunchError, match=re.escape(words)):
            fit_allocation(wide, alloc)

