"""Rendering against golden files, and quoting proven by running the rendered line in bash."""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from launcher import config, render
from launcher.config import Request

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("LAUNCH_UPDATE_GOLDEN") == "1"

JOB = """
[job]
name = "digits"

[model]
class_path = "mlp"

[data]
class_path = "digits"
"""

CLUSTER = """
[local]
backend = "local"
gpus_per_node = {gpus}
env = {{ NCCL_DEBUG = "WARN" }}
"""


def fixed_config(write, gpus_on_machine: int = 0, run_dir: str = "/runs/digits/RUN", **kwargs) -> config.JobConfig:
    job = write("job.toml", JOB)
    cluster = write("cluster.toml", CLUSTER.format(gpus=gpus_on_machine))
    cfg = config.resolve(Request(job_file=str(job), cluster_file=str(cluster), **kwargs))
    run = dataclasses.replace(cfg.run, id="RUN", dir=run_dir, workdir="/work", python="python", rdzv_port=29500)
    return dataclasses.replace(cfg, run=run, resources=dataclasses.replace(cfg.resources, cpus_per_task=1))


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert path.exists(), f"missing golden file {path}; run with LAUNCH_UPDATE_GOLDEN=1 once and review it"
    assert text == path.read_text()


@pytest.mark.parametrize(
    "name,machine_gpus,kwargs",
    [
        ("local_1x2cpu.sh", 0, {}),
        ("local_1x4cpu.sh", 0, {"procs": 4}),
        ("local_2x1cpu.sh", 0, {"nodes": 2, "procs": 1}),
        ("local_1x4gpu.sh", 4, {}),
        ("local_1x1gpu.sh", 4, {"gpus": 1}),
    ],
)
def test_local_render_matches_golden(write, name, machine_gpus, kwargs) -> None:
    check_golden(name, render.render_local(fixed_config(write, machine_gpus, **kwargs)))


def test_local_plan_is_the_rendered_text(write) -> None:
    cfg = fixed_config(write, nodes=2, procs=1)
    cmds = render.local_commands(cfg)
    assert [c.node for c in cmds] == [0, 1]
    lines = [line.removesuffix(" &") for line in render.render_local(cfg).splitlines() if line.startswith("env ")]
    for cmd, line in zip(cmds, lines, strict=True):
        words = shlex.split(line)
        assert words[0] == "env"
        assert words[1 : 1 + len(cmd.env)] == [f"{k}={v}" for k, v in cmd.env]
        assert tuple(words[1 + len(cmd.env):]) == cmd.argv


NASTY = "/tmp/it's a \"run\" $(touch PWNED) `touch PWNED2`; $HOME\nnext"


def test_nasty_paths_reach_the_command_unchanged(write, tmp_path) -> None:
    """The rendered line, run by bash with a stand-in python, receives exactly the intended words."""
    cfg = fixed_config(write, run_dir=NASTY)
    cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, env={"WEIRD": "a b;c$(x)'\""}))
    fake = tmp_path / "fakepython"
    fake.write_text(
        "#!/usr/bin/env python3\nimport json, os, sys\n"
        'print(json.dumps({"argv": sys.argv[1:], "env": os.environ.get("WEIRD"), "dir": os.environ.get("LAUNCH_RUN_DIR")}))\n'
    )
    fake.chmod(0o755)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, python=str(fake)))
    (cmd,) = render.local_commands(cfg)
    result = subprocess.run(["bash", "-c", render.shell_line(cmd)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    import json

    got = json.loads(result.stdout)
    assert got["argv"][-1] == NASTY and got["dir"] == NASTY and got["env"] == "a b;c$(x)'\""
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()


SLURM_CLUSTER = """
[gpu8]
backend = "slurm"
partition = "gpu"
account = "ml-team"
qos = "high"
constraint = "h100"
gpus_per_node = 8
cpus_per_node = 96
mem_per_node = "1000G"
mem = "800G"
gpu_bind = "closest"
max_time = "2-00:00:00"
launch_mode = "{mode}"
signal = "USR1"
signal_grace_s = 120
sbatch_extra = ["--exclusive"]
setup = ["module load cuda/12.4", "source /opt/venvs/train/bin/activate"]
env = {{ NCCL_DEBUG = "WARN" }}
python = "python"

[cpu]
backend = "slurm"
partition = "debug"
gpus_per_node = 0
cpus_per_node = 2
launch_mode = "{mode}"
python = "python"

[gpu8-pyxis]
backend = "slurm"
partition = "gpu"
gpus_per_node = 8
cpus_per_node = 96
launch_mode = "{mode}"
container_image = "nvcr.io#nvidia/pytorch:24.05-py3"
container_mounts = ["/datasets:/datasets:ro"]

[gpu8-apptainer]
backend = "slurm"
partition = "gpu"
gpus_per_node = 8
cpus_per_node = 96
launch_mode = "{mode}"
apptainer_image = "/images/train.sif"
apptainer_binds = ["/datasets:/data:ro", "/scratch"]
"""


def slurm_config(write, mode: str, profile: str, run_dir: str = "/shared/runs/mnist/RUN", **kwargs) -> config.JobConfig:
    job = write("job.toml", JOB + "\n[resources]\ncpus_per_task = 1\n")
    cluster = write("cluster.toml", SLURM_CLUSTER.format(mode=mode))
    cfg = config.resolve(Request(job_file=str(job), cluster_file=str(cluster), cluster=profile, **kwargs))
    in_container = cfg.cluster.container is not None  # the hooks run on the host: the submitting interpreter
    run = dataclasses.replace(cfg.run, id="RUN", dir=run_dir, workdir="/home/me/project", python="python",
                              launcher_python="/home/me/venv/bin/python" if in_container else "")
    return dataclasses.replace(cfg, run=run)


BIG = ("resources.mem=900G", "resources.time=12:00:00")
SBATCH_CASES = [
    ("sbatch_srun_1x1cpu.sh", "srun", "cpu", {"nodes": 1, "procs": 1}),
    ("sbatch_srun_1x2cpu.sh", "srun", "cpu", {"nodes": 1, "procs": 2}),
    ("sbatch_srun_2x1cpu.sh", "srun", "cpu", {"nodes": 2, "procs": 1}),
    ("sbatch_srun_4x8gpu.sh", "srun", "gpu8", {"nodes": 4, "gpus": 8, "overrides": BIG}),
    ("sbatch_torchrun_1x1cpu.sh", "torchrun", "cpu", {"nodes": 1, "procs": 1}),
    ("sbatch_torchrun_2x1cpu.sh", "torchrun", "cpu", {"nodes": 2, "procs": 1}),
    ("sbatch_torchrun_4x8gpu.sh", "torchrun", "gpu8", {"nodes": 4, "gpus": 8, "overrides": BIG}),
    ("sbatch_srun_2x8gpu_pyxis.sh", "srun", "gpu8-pyxis", {"nodes": 2, "gpus": 8}),
    ("sbatch_torchrun_2x8gpu_apptainer.sh", "torchrun", "gpu8-apptainer", {"nodes": 2, "gpus": 8}),
    ("sbatch_srun_1x2cpu_apptainer.sh", "srun", "gpu8-apptainer", {"nodes": 1, "gpus": 0, "procs": 2}),
]


@pytest.mark.parametrize("name,mode,profile,kwargs", SBATCH_CASES, ids=[c[0] for c in SBATCH_CASES])
def test_sbatch_render_matches_golden(write, name, mode, profile, kwargs) -> None:
    check_golden(name, render.render_sbatch(slurm_config(write, mode, profile, **kwargs)))


@pytest.mark.parametrize("mode", ["srun", "torchrun"])
def test_srun_restates_the_cpus_of_a_task_and_binds_gpus_in_srun_mode(write, mode) -> None:
    """Slurm 22.05-23.02's srun does not inherit the batch's --cpus-per-task: every srun line says
    it (a rank's CPUs; in torchrun mode the node's). The profile's memory is the default request."""
    script = render.render_sbatch(slurm_config(write, mode, "gpu8", nodes=2, gpus=8))
    srun = [line for line in script.splitlines() if line.strip().startswith("srun ")]
    cpus = 1 if mode == "srun" else 8  # the job asks 1 CPU a rank; torchrun mode: the node's 8 ranks in one task
    assert len(srun) == 1 and f" --cpus-per-task={cpus} " in srun[0] and f"#SBATCH --cpus-per-task={cpus}" in script
    assert (" --gpu-bind=closest " in srun[0]) == (mode == "srun"), srun[0]
    assert "#SBATCH --mem=800G" in script  # the profile's, as the job does not say
    cpu_only = render.render_sbatch(slurm_config(write, mode, "cpu", nodes=1, procs=2))
    assert "--gpu-bind" not in cpu_only


def test_a_gpu_binding_slurm_does_not_know_is_refused(write) -> None:
    job = write("job.toml", JOB)
    cluster = write("cluster.toml", SLURM_CLUSTER.format(mode="srun").replace('gpu_bind = "closest"',
                                                                             'gpu_bind = "nearest; rm -rf ~"'))
    with pytest.raises(config.ConfigError, match=r"cluster.gpu_bind.*use closest, none, single:N"):
        config.resolve(Request(job_file=str(job), cluster_file=str(cluster), cluster="gpu8"))


def test_sbatch_task_command_is_submitits_own(write, tmp_path) -> None:
    """The task command we render is byte for byte what submitit's executor generates."""
    import shlex

    import submitit

    cfg = slurm_config(write, "srun", "cpu", run_dir=str(tmp_path / "a run's \"dir\""))
    executor = submitit.SlurmExecutor.__new__(submitit.SlurmExecutor)
    executor.folder = Path(render.submitit_folder(cfg))
    executor.python = shlex.quote(cfg.run.python)
    assert executor._submitit_command_str == render.submitit_command(cfg)


def test_sbatch_quotes_every_value_and_runs_in_bash(write, tmp_path) -> None:
    """A nasty run directory and env value: bash -n parses the script, and the exports hold them."""
    nasty = NASTY.replace("\n", " ")  # line breaks in paths are refused at submission
    cfg = slurm_config(write, "torchrun", "cpu", run_dir=nasty)
    cfg = dataclasses.replace(cfg, cluster=dataclasses.replace(cfg.cluster, env={"WEIRD": "a b;c$(x)'\""}))
    script = render.render_sbatch(cfg)
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    exports = "\n".join(line for line in script.splitlines() if line.startswith("export ") and "RDZV" not in line)
    probe = exports + '\nprintf "%s\\0%s" "$LAUNCH_RUN_DIR" "$WEIRD"\n'
    result = subprocess.run(["bash", "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert result.stdout.split("\0") == [nasty, "a b;c$(x)'\""]
    assert not (tmp_path / "PWNED").exists()


def test_sbatch_array_task_runs_its_own_runs_script_into_its_own_log(write, tmp_path) -> None:
    """The sweep's job array: task i execs run i's batch script, output appended to run i's task-0 log."""
    cfgs = []
    for i in range(3):
        run_dir = tmp_path / f"run {i} $(touch PWNED) 'q'"
        (run_dir / "submitit").mkdir(parents=True)
        (run_dir / "job.sbatch").write_text(f'echo "run {i} ran with $SLURM_ARRAY_TASK_ID"\n')
        cfgs.append(slurm_config(write, "srun", "cpu", run_dir=str(run_dir)))
    script = render.render_sbatch_array(cfgs, str(tmp_path / "sweep"))
    assert "#SBATCH --array=0-2" in script and f"#SBATCH --output={tmp_path}/sweep/%A_%a.out" in script
    member = render.render_sbatch(cfgs[1], array=True)
    assert "/submitit/%A_%a_%t_log.out" in member and "%j" not in member
    for task in (0, 2):
        env = {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_JOB_ID": "77", "PATH": "/usr/bin:/bin"}
        done = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        log = Path(cfgs[task].run.dir) / "submitit" / f"77_{task}_0_log.out"
        assert log.read_text() == f"run {task} ran with {task}\n"
    missing = subprocess.run(["bash", "-c", script], env={"SLURM_ARRAY_TASK_ID": "9", "PATH": "/usr/bin:/bin"},
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "no run for array task 9" in missing.stderr
    assert not (tmp_path / "PWNED").exists()
