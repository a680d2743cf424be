"""The opt-in speed settings (`[performance]` and MNIST's `in_memory`) in real 2-process runs on the
CPU: they change how the model is computed, not what it learns, and a compiled run survives
preemption bit for bit. (Their speed is measured on a GPU by bench/gpu_mnist.py, not here.)"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from tests.helpers.idx import write_tiny_mnist
from tests.helpers.launch import run_launch
from tests.helpers.modules import SlowCNN
from tests.helpers.runs import count, progress_step, wait_end, wait_for

pytestmark = pytest.mark.multiprocess

JOB = """
[job]
name = "{name}"
seed = 5

[model]
class_path = "tests.helpers.modules:SlowCNN"
init_args = {{ width = 8, dropout = {dropout}, lr = 0.003, step_sleep = {sleep} }}

[data]
class_path = "mnist"
init_args = {{ data_dir = "{data}", batch_size = 16, val_size = 80, num_workers = 0, in_memory = {in_memory} }}

[trainer]
max_epochs = 3
log_every_n_steps = 1
enable_progress_bar = false

[performance]
channels_last = {fast}
compile = {fast}
"""

STEPS = 30  # 320 training images, 2 ranks, batches of 16, 3 epochs


def write_job(tmp: Path, name: str, fast: bool, sleep: float = 0.0, dropout: float = 0.0) -> Path:
    path = tmp / f"{name}.toml"
    flag = "true" if fast else "false"
    path.write_text(JOB.format(name=name, data=tmp / "data", sleep=sleep, fast=flag, in_memory=flag, dropout=dropout))
    return path


def start(job: Path, runs: Path, cache: Path, *extra: str) -> Path:
    result = run_launch("submit", str(job), "--runs-dir", str(runs), "--procs", "2", *extra,
                        env={"TORCHINDUCTOR_CACHE_DIR": str(cache)}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(result.stdout.strip().splitlines()[-1])


def finished(run_dir: Path) -> dict[str, torch.Tensor]:
    info = wait_end(run_dir, timeout=540)
    assert info["state"] == "completed" and info["global_step"] == STEPS, info
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def step_losses(run_dir: Path) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return [float(r["train_loss_step"]) for r in csv.DictReader(fh) if r.get("train_loss_step")]


def compiled_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.is_file()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("speed")
    write_tiny_mnist(tmp / "data", n_train=400, n_test=40)
    # without dropout for the comparison: a compiled dropout draws its masks differently from eager
    # PyTorch (inductor's own random kernels), so masks, and so losses, would differ by design
    return {"tmp": tmp, "eager": start(write_job(tmp, "eager", fast=False), tmp / "runs", tmp / "inductor-eager"),
            "fast": start(write_job(tmp, "fast", fast=True), tmp / "runs", tmp / "inductor"),
            "dropout": start(write_job(tmp, "dropout", fast=True, dropout=0.2), tmp / "runs", tmp / "inductor")}


def test_compile_channels_last_and_in_memory_learn_what_the_plain_run_learns(runs) -> None:
    eager, fast = finished(runs["eager"]), finished(runs["fast"])
    # torch.compile really ran (inductor wrote its kernels), the plain run compiled nothing
    assert compiled_files(runs["tmp"] / "inductor") and not compiled_files(runs["tmp"] / "inductor-eager")
    # the checkpoint is the plain module's: no compiler wrapper in the keys (it loads, strictly, into an
    # uncompiled model below)
    assert fast.keys() == eager.keys() and not any("_orig_mod" in k for k in fast)
    # the conv weights were trained in channels_last (torch.save keeps strides); the plain run's were not
    # (the first conv has one input channel, for which both layouts are the same)
    convs = [k for k, v in fast.items() if k.endswith("weight") and v.dim() == 4 and v.shape[1] > 1]
    assert len(convs) == 1
    for k in convs:
        assert fast[k].is_contiguous(memory_format=torch.channels_last) and not fast[k].is_contiguous()
        assert eager[k].is_contiguous() and not eager[k].is_contiguous(memory_format=torch.channels_last)
    # the same computation: every step's loss agrees to float32 rounding, and the weights stay close
    a, b = step_losses(runs["fast"]), step_losses(runs["eager"])
    assert len(a) == len(b) == STEPS
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-5), (i, x, y)
    # A conv bias followed by BatchNorm has a zero gradient in exact arithmetic: Adam turns its float32
    # rounding noise into lr-sized steps, so those biases (and the running means that track them) are
    # noise in both runs. Every other tensor agrees, and so does the trained function with batch
    # statistics (where those biases cancel exactly).
    noise = {"net.0.bias", "net.4.bias", "net.1.running_mean", "net.5.running_mean", "net.1.num_batches_tracked",
             "net.5.num_batches_tracked"}
    for k in fast.keys() - noise:
        torch.testing.assert_close(fast[k], eager[k], rtol=1e-3, atol=1e-3, msg=k)
    models = [SlowCNN(width=8, dropout=0.0), SlowCNN(width=8, dropout=0.0)]
    for model, state in zip(models, (fast, eager), strict=True):
        model.load_state_dict(state, strict=True)
        model.train()
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(models[0](x), models[1](x), rtol=0, atol=5e-3)


def test_a_compiled_run_preempted_mid_epoch_ends_bit_identical_to_an_uninterrupted_one(runs) -> None:
    tmp = runs["tmp"]
    # with dropout: the compiled masks' random state must come back too
    job = write_job(tmp, "dropout", fast=True, sleep=0.1, dropout=0.2)
    run_dir = start(job, tmp / "preempted", tmp / "inductor")
    wait_for(lambda: progress_step(run_dir) >= 14, 400, "step 14", run_dir)  # mid epoch 1
    result = run_launch("preempt", str(run_dir))
    assert result.returncode == 0, result.stderr
    wait_for(lambda: count(run_dir, "resumed") == 1, 400, "the resume", run_dir)
    preempted, uninterrupted = finished(run_dir), finished(runs["dropout"])
    different = [k for k in uninterrupted if not torch.equal(preempted[k], uninterrupted[k])]
    assert not different, f"weights differ from the uninterrupted compiled run: {different}"
    assert step_losses(run_dir) == step_losses(runs["dropout"])
