"""The training toolbox driven from the job file: each feature is shown to act, not just to parse.

In-process tests (one process, a few batches) check the schedules, clipping and SWA against torch's
own arithmetic; real runs (2 processes over gloo) check the rest end to end.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import pytest
import torch

from launcher import config
from tests.helpers.launch import REPO, run_launch

JOB = """
[job]
name = "{name}"
seed = 11

[model]
class_path = "{model}"
init_args = {{ in_features = 64, hidden = 32, dropout = 0.0{args} }}

[data]
class_path = "digits"
init_args = {{ data_dir = "{data}", batch_size = 32 }}

[trainer]
max_epochs = {epochs}
log_every_n_steps = 1
enable_progress_bar = false
{trainer}
{extra}
"""


def write_job(tmp: Path, name: str, epochs: int = 2, model: str = "mlp", args: str = "", trainer: str = "",
              extra: str = "") -> Path:
    path = tmp / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(JOB.format(name=name, model=model, args=args, data=tmp / "data", epochs=epochs, trainer=trainer,
                               extra=extra))
    return path


def rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def status(run_dir: Path) -> dict:
    return json.loads(run_launch("status", str(run_dir), "--json").stdout)


def submit(job: Path, runs: Path, *extra: str) -> Path:
    result = run_launch("submit", str(job), "--runs-dir", str(runs), "--follow", *extra)
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


# --------------------------------------------------------------------------- in-process: schedules


def fit_in_process(tmp_path: Path, sets: list[str], steps_per_epoch: int = 6, epochs: int = 3):  # noqa: ANN201
    """Build the job's model and optimizer as the runtime does and fit a few batches on one CPU."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import LearningRateMonitor
    from pytorch_lightning.loggers import CSVLogger

    from launcher.runtime import callbacks as job_callbacks
    from launcher.runtime.build import build_model_and_data as build

    job = write_job(tmp_path, "inproc", epochs=epochs)
    cfg = config.resolve(config.Request(job_file=str(job), procs=1, overrides=tuple(sets)))
    model, datamodule = build(cfg)
    logger = CSVLogger(tmp_path / "logs", name="", version="")
    callbacks = [LearningRateMonitor(logging_interval="step")] + [
        c for c in job_callbacks.from_job_file(cfg, None, True) if not isinstance(c, (job_callbacks.RunEnd, LearningRateMonitor))]
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, limit_train_batches=steps_per_epoch,
                         limit_val_batches=2, num_sanity_val_steps=0, logger=logger, callbacks=callbacks,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         log_every_n_steps=1, gradient_clip_val=cfg.trainer.gradient_clip_val,
                         gradient_clip_algorithm=cfg.trainer.gradient_clip_algorithm)
    trainer.fit(model, datamodule=datamodule)
    table = rows(tmp_path / "logs")
    column = "lr" if "lr" in table[0] else next(c for c in table[0] if c.startswith("lr-"))  # no scheduler: lr-SGD
    logged = [(int(r["step"]), float(r[column])) for r in table if r.get(column)]
    return model, trainer, logged


def reference_lrs(make_scheduler, steps: int, per_step: bool, steps_per_epoch: int) -> list[float]:  # noqa: ANN001
    """The learning rate torch's own scheduler gives before each optimizer step."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for step in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if per_step or (step + 1) % steps_per_epoch == 0:
            scheduler.step()
    return lrs


SCHEDULES = {
    "step-per-step": (["lr_scheduler.name='step'", "lr_scheduler.interval='step'", "lr_scheduler.step_size=4",
                       "lr_scheduler.gamma=0.5"],
                      lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5), True),
    "step-per-epoch": (["lr_scheduler.name='step'", "lr_scheduler.step_size=1", "lr_scheduler.gamma=0.3"],
                       lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.3), False),
    "cosine-per-step": (["lr_scheduler.name='cosine'", "lr_scheduler.interval='step'", "lr_scheduler.eta_min=0.001"],
                        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=18, eta_min=0.001), True),
    "onecycle": (["lr_scheduler.name='onecycle'", "lr_scheduler.max_lr=0.5"],
                 lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.5, total_steps=18), True),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_the_logged_learning_rate_follows_the_configured_schedule(name: str, tmp_path: Path) -> None:
    sets, make, per_step = SCHEDULES[name]
    _, trainer, logged = fit_in_process(tmp_path, ["optimizer.name='sgd'", "optimizer.lr=0.1", *sets])
    expected = reference_lrs(make, 18, per_step, steps_per_epoch=6)
    assert trainer.global_step == 18
    assert [s for s, _ in logged] == list(range(18))
    assert [lr for _, lr in logged] == pytest.approx(expected, rel=1e-6)
    assert len(set(expected)) > 2  # the schedule really changes the rate


def test_plateau_scheduler_cuts_the_rate_when_the_monitored_metric_stalls(tmp_path: Path) -> None:
    sets = ["optimizer.name='sgd'", "optimizer.lr=0.0", "lr_scheduler.name='plateau'", "lr_scheduler.monitor='val_loss'",
            "lr_scheduler.patience=0", "lr_scheduler.factor=0.5"]
    with pytest.raises(config.ConfigError, match="optimizer.lr"):
        fit_in_process(tmp_path, sets)  # a zero rate is refused up front
    sets[1] = "optimizer.lr=1e-5"  # too small to move val_loss by the plateau threshold: every epoch stalls
    _, _, logged = fit_in_process(tmp_path, sets, epochs=4)
    per_epoch = [lr for step, lr in logged if step % 6 == 0]
    assert per_epoch == pytest.approx([1e-5, 1e-5, 5e-6, 2.5e-6])  # epoch 0 sets the best; then halved per stall


def test_adam_and_adamw_are_built_with_the_job_files_settings(tmp_path: Path) -> None:
    for name, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        model, trainer, _ = fit_in_process(tmp_path / name, [f"optimizer.name='{name}'", "optimizer.lr=0.003",
                                                             "optimizer.weight_decay=0.01"], epochs=1)
        (optimizer,) = trainer.optimizers
        assert type(optimizer) is cls
        assert optimizer.param_groups[0]["lr"] == 0.003 and optimizer.param_groups[0]["weight_decay"] == 0.01


def test_gradient_clipping_by_value_bounds_every_update(tmp_path: Path) -> None:
    before = None

    def run(sets: list[str]) -> float:
        nonlocal before
        model, _, _ = fit_in_process(tmp_path / str(len(sets)), ["optimizer.name='sgd'", "optimizer.lr=1.0", *sets],
                                     steps_per_epoch=1, epochs=1)
        from launcher.runtime.build import build_model_and_data as build

        cfg = config.resolve(config.Request(job_file=str(tmp_path / str(len(sets)) / "inproc.toml"), procs=1))
        fresh, _ = build(cfg)  # the same seed: the weights before the single step
        return max((a - b).abs().max().item() for a, b in zip(model.parameters(), fresh.parameters(), strict=True))

    clipped = run(["trainer.gradient_clip_val=0.001", "trainer.gradient_clip_algorithm='value'"])
    free = run([])
    assert clipped <= 0.001 + 1e-7 < free


def test_stochastic_weight_averaging_switches_the_rate_and_averages(tmp_path: Path) -> None:
    sets = ["optimizer.name='sgd'", "optimizer.lr=0.1", "swa.swa_lrs=0.02", "swa.swa_epoch_start=2",
            "swa.annealing_epochs=1"]
    model, trainer, logged = fit_in_process(tmp_path, sets, epochs=3)
    from pytorch_lightning.callbacks import StochasticWeightAveraging

    (swa,) = [c for c in trainer.callbacks if isinstance(c, StochasticWeightAveraging)]
    assert int(swa.n_averaged) == 2  # from the 2nd epoch (counted from 1) on: epochs 2 and 3
    assert logged[0][1] == 0.1 and logged[-1][1] == pytest.approx(0.02)
    averaged = dict(swa._average_model.named_parameters())
    for name, param in model.named_parameters():  # the model ends with the averaged weights
        assert torch.equal(param.detach(), averaged[name].detach())


# --------------------------------------------------------------------------- real runs


@pytest.mark.multiprocess
def test_one_run_with_the_toolbox_on_does_what_each_key_says(tmp_path: Path) -> None:
    extra = """
[optimizer]
name = "sgd"
lr = 0.1
momentum = 0.9

[lr_scheduler]
name = "step"
interval = "step"
step_size = 5
gamma = 0.5

[checkpoint]
monitor = "val_acc"
mode = "max"
save_top_k = 2

[logging]
grad_norm = true
histograms = true
"""
    job = write_job(tmp_path, "toolbox", epochs=4, trainer='accumulate_grad_batches = 2\nprofiler = "simple"', extra=extra)
    run_dir = submit(job, tmp_path / "runs")
    info = status(run_dir)
    # accumulate_grad_batches = 2 halves the optimizer steps: 23 batches per rank per epoch -> 12 steps
    assert info["global_step"] == 4 * 12
    # save_top_k = 2 keeps exactly two (of four epoch checkpoints), plus last.ckpt
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert len(kept) == 3 and "last.ckpt" in kept, kept
    # the learning rate logged at every step is the StepLR schedule
    lrs = [(int(r["step"]), float(r["lr"])) for r in rows(run_dir) if r.get("lr")]
    assert sorted({step for step, _ in lrs}) == list(range(48))  # logged per batch, indexed by optimizer step
    assert all(lr == pytest.approx(0.1 * 0.5 ** (step // 5)) for step, lr in lrs), lrs[:12]
    # gradient norms, per parameter and in total
    norms = [float(r["grad_2.0_norm_total"]) for r in rows(run_dir) if r.get("grad_2.0_norm_total")]
    assert len(norms) >= 40 and all(n > 0 for n in norms)
    # TensorBoard: histograms, and the HPARAMS plugin with hp_metric = the best monitored value
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"histograms": 0, "tensors": 0})
    acc.Reload()
    assert "net.1.weight" in acc.Tags()["histograms"]
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["hp_metric"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["optimizer.lr"].number_value == 0.1 and start.hparams["optimizer.name"].string_value == "sgd"
    best = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    best_score = next(v["best_model_score"] for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert [e.value for e in acc.Scalars("hp_metric")] == [pytest.approx(float(best_score))]
    # the profiler's report in the run directory, the loss curve as a PNG
    report = (run_dir / "profiler" / "fit-report-0.txt").read_text()
    assert "FIT Profiler Report" in report and "run_training_batch" in report
    assert (run_dir / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # TensorBoard and CSV side by side in ONE run directory, no version folders
    assert not list(run_dir.glob("**/version_*"))

    # launch predict: the best checkpoint's predictions for the test set, as .pt and .csv
    result = run_launch("predict", str(run_dir), "--ckpt", "best")
    assert result.returncode == 0, result.stderr[-2000:]
    out = Path(result.stdout.strip().splitlines()[-1])
    scores = torch.load(out, weights_only=False)
    from datamodules.digits import DigitsDataModule

    dm = DigitsDataModule(data_dir=str(tmp_path / "data"))
    dm.setup("test")
    labels = torch.stack([y for _, y in dm.test_set])
    assert scores.shape == (len(labels), 10)
    with open(out.with_suffix(".csv")) as fh:
        predicted = [int(r["prediction"]) for r in csv.DictReader(fh)]
    assert predicted == scores.argmax(-1).tolist()
    accuracy = (scores.argmax(-1) == labels).float().mean().item()
    assert accuracy == pytest.approx(info["metrics"]["test_acc"], abs=1e-6)  # test ran on the best checkpoint too


@pytest.mark.multiprocess
def test_early_stopping_stops_on_a_plateau_and_its_state_survives_preemption(tmp_path: Path) -> None:
    extra = '[early_stopping]\nmonitor = "val_loss"\npatience = 1\nmin_delta = 0.2'
    job = write_job(tmp_path, "early", epochs=20, model="tests.helpers.modules.SlowMLP", args=", step_sleep = 0.08",
                    extra=extra)
    baseline = submit(job, tmp_path / "runs")
    base = status(baseline)
    assert base["epoch"] < 19, base  # stopped long before max_epochs

    result = run_launch("submit", str(job), "--runs-dir", str(tmp_path / "runs"))
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    deadline = time.monotonic() + 120
    while status(run_dir)["global_step"] < 30:  # into epoch 1, after early stopping's first check
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert run_launch("preempt", str(run_dir)).returncode == 0
    deadline = time.monotonic() + 300
    while status(run_dir)["state"] not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    info = status(run_dir)
    assert info["state"] == "completed" and info["restarts"] == 1, info
    assert (info["global_step"], info["epoch"]) == (base["global_step"], base["epoch"])

    def stopper(path: Path) -> dict:
        state = torch.load(path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["callbacks"]
        return next(v for k, v in state.items() if k.startswith("EarlyStopping"))

    a, b = stopper(run_dir), stopper(baseline)
    assert (a["wait_count"], a["stopped_epoch"]) == (b["wait_count"], b["stopped_epoch"]) and a["stopped_epoch"] > 0
    assert torch.equal(a["best_score"], b["best_score"])


@pytest.mark.multiprocess
def test_tune_finds_a_learning_rate_and_a_batch_size_and_writes_them_into_a_job_file(tmp_path: Path) -> None:
    job = write_job(tmp_path, "tuneme", args=", lr = 0.5")
    result = run_launch("tune", str(job), "--runs-dir", str(tmp_path / "runs"), "--lr", "--batch-size",
                        "--max-trials", "2", "--out", str(tmp_path / "tuned.toml"), timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    tuned = config.resolve(config.Request(job_file=str(tmp_path / "tuned.toml")))
    original = config.resolve(config.Request(job_file=str(job)))
    assert tuned.model.init_args["lr"] != 0.5 and 0 < tuned.model.init_args["lr"] < 1
    assert tuned.data.init_args["batch_size"] in (64, 128) and original.data.init_args["batch_size"] == 32
    (tune_dir,) = (tmp_path / "runs" / "tuneme" / "tune").iterdir()
    assert (tune_dir / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tune_dir / "tune.json").read_text())["lr"] == tuned.model.init_args["lr"]


@pytest.mark.multiprocess
def test_a_four_point_grid_sweep_of_a_script_makes_four_runs_and_a_sorted_table(tmp_path: Path) -> None:
    """A plain script's own option (`args.lr`: its `--lr`) crossed with a [trainer] key the job sets
    over the script's Trainer (`trainer.max_epochs`, replacing its max_epochs=3); the script's own
    progress bar is kept."""
    result = run_launch("sweep", "tests/scripts/train_pl.py", "--runs-dir", str(tmp_path / "runs"), "--procs", "1",
                        "--set", "checkpoint.monitor='val_acc'", "--set", "checkpoint.mode='max'",
                        "--set", "trainer.limit_train_batches=6", "--set", "trainer.limit_val_batches=4",
                        "--grid", "args.lr=0.001,0.05", "--grid", "trainer.max_epochs=1,2", timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p for p in (tmp_path / "runs" / "train_pl").iterdir() if p.name != "sweeps"]
    assert len(runs) == 4
    (table,) = (tmp_path / "runs" / "train_pl" / "sweeps").glob("*.csv")
    with open(table, newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert len(lines) == 4 and {r["state"] for r in lines} == {"completed"}
    points = {(float(r["args.lr"]), int(r["trainer.max_epochs"])) for r in lines}
    assert points == {(0.001, 1), (0.001, 2), (0.05, 1), (0.05, 2)}
    values = [float(r["val_acc"]) for r in lines]
    assert values == sorted(values, reverse=True) and not math.isclose(values[0], values[-1])
    for r in lines:  # each run's own record agrees with the table; the script got its option
        run = Path(r["run"])
        assert status(run)["metrics"]["val_acc"] == float(r["val_acc"])
        assert status(run)["global_step"] == 6 * int(r["trainer.max_epochs"])
        frozen = config.load_resolved(run / "config.toml")
        assert frozen.job.args == ["--lr", str(float(r["args.lr"]))], frozen.job.args
        # the script's own TQDMProgressBar is the run's one bar (beside launch's, Lightning refused it)
        assert "[launch] the script's own progress bar (TQDMProgressBar) is kept: launch adds none" in \
            (run / "console.log").read_text()
    assert "val_acc" in result.stdout and len(result.stdout.strip().splitlines()) == 5
    bad = run_launch("sweep", str(write_job(tmp_path, "job")), "--grid", "args.lr=0.1,0.2", cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.startswith("launch: error: --grid/--random args.lr: an axis over a "
                                                         "script's arguments"), bad.stderr


def test_bad_toolbox_settings_are_refused_in_one_line(tmp_path: Path) -> None:
    job = write_job(tmp_path, "bad")
    cases = [
        (["lr_scheduler.name='cosine'"], "lr_scheduler.name", "needs [optimizer]"),
        (["optimizer.name='sgd'", "lr_scheduler.name='plateau'"], "lr_scheduler.monitor", "needs the metric"),
        (["optimizer.name='adam'", "optimizer.momentum=0.9"], "optimizer.momentum", "for sgd"),
        (["swa.swa_lrs=-1.0"], "swa.swa_lrs", "positive"),
        (["trainer.profiler='fancy'"], "trainer.profiler", "'simple'"),
        (["early_stopping.mode='up'"], "early_stopping.mode", "'min', 'max'"),
    ]
    for sets, key, fragment in cases:
        args = [a for s in sets for a in ("--set", s)]
        result = run_launch("submit", str(job), "--runs-dir", str(tmp_path / "runs"), "--dry-run", *args, cwd=REPO)
        assert result.returncode == 2 and key in result.stderr and fragment in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_cpu_run_does_not_load_nvml_at_every_optimizer_step(tmp_path: Path, monkeypatch) -> None:
    """Importing Lightning turns on torch's NVML-based CUDA check, which (CUDA never initialised)
    loads NVML at every torch.cuda.is_available(): torch's optimizers ask once per step. The
    runtime's Trainer for a CPU run turns it off; a GPU run keeps Lightning's choice."""
    import pytorch_lightning  # noqa: F401  (sets the variable)
    import torch.cuda

    from launcher.rundir import RunDir
    from launcher.runtime.build import build_trainer

    monkeypatch.setenv("PYTORCH_NVML_BASED_CUDA_CHECK", "1")  # restored after the test
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29999"}.items():
        monkeypatch.setenv(key, value)  # what torchrun gives a rank
    loads = []
    real = torch.cuda._raw_device_count_nvml
    monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: loads.append(1) or real())
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([param])
    param.grad = torch.ones(3)
    optimizer.step()
    assert loads, "torch no longer asks NVML in the optimizer step: this workaround can go"
    cfg = config.resolve(config.Request(job_file=str(write_job(tmp_path, "cpu")), procs=1))
    assert not cfg.uses_gpus
    build_trainer(cfg, RunDir(tmp_path / "run"), [])
    loads.clear()
    for _ in range(5):
        optimizer.step()
    assert loads == []
