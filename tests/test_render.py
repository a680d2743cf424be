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
    fake.write_text('#!/usr/bin/env python3\nimport json, os, sys\nprint(json.dumps({"argv": sys.argv[1:], "env": os.environ.get("WEIRD"), "dir": os.environ.get("LAUNCH_RUN_DIR")}))\n')
    fake.chmod(0o755)
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, python=str(fake)))
    (cmd,) = render.local_commands(cfg)
    result = subprocess.run(["bash", "-c", render.shell_line(cmd)], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    import json

    got = json.loads(result.stdout)
    assert got["argv"][-1] == NASTY and got["dir"] == NASTY and got["env"] == "a b;c$(x)'\""
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()
