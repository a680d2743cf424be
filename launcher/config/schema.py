"""The job file and cluster profile as typed, frozen dataclasses, with simple bounds on the fields.

A bound is checked after the whole config is built (config.checks), so its error can name the
file the value came from; rules that involve more than one field live in config.checks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_PROFILE = "local"

Precision = Literal["64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true"]


# --------------------------------------------------------------------------- bounds


@dataclass(frozen=True)
class Bound:
    """A rule on one field's value: `allowed(value)`, else the error `message` (with {value})."""

    allowed: Callable[[Any], bool]
    message: str


def _number(value: Any, kind: type | tuple[type, ...] = (int, float)) -> bool:
    return isinstance(value, kind) and not isinstance(value, bool)


def at_least(low: float, message: str, only: type | tuple[type, ...] = (int, float)) -> Bound:
    """Numbers of type `only` must be >= low (other values, and unset ones, pass)."""
    return Bound(lambda v: not _number(v, only) or v >= low, message)


def above(low: float, message: str) -> Bound:
    return Bound(lambda v: not _number(v) or v > low, message)


def fraction(message: str, open_ends: bool = False) -> Bound:
    """A float between 0 and 1 (an int in the same field is a count, checked separately)."""
    if open_ends:
        return Bound(lambda v: not isinstance(v, float) or 0.0 < v < 1.0, message)
    return Bound(lambda v: not isinstance(v, float) or 0.0 <= v <= 1.0, message)


def bounded(default: Any, *bounds: Bound) -> Any:
    """A dataclass field with `default` and the bounds its value must keep."""
    return field(default=default, metadata={"bounds": bounds})


def bounds_of(f: dataclasses.Field) -> tuple[Bound, ...]:
    return f.metadata.get("bounds", ())


AT_LEAST_ONE = at_least(1, "{value}: must be at least 1")
NOT_NEGATIVE = at_least(0, "{value}: must not be negative")
POSITIVE = above(0, "{value}: must be positive")
OFF_OR_ABOVE_ONE = Bound(lambda v: not _number(v) or v == 0 or v > 1, "{value}: use 0 (off) or above 1")
BATCHES = (fraction("{value}: a fraction must be between 0.0 and 1.0 (or give a batch count)"),
           at_least(0, "{value}: must not be negative", only=int))


# --------------------------------------------------------------------------- the job file


@dataclass(frozen=True)
class JobSection:
    name: str  # letters, digits, . _ + -; names the runs/<name>/ folder
    seed: int = 0  # seeds every rank (torch, numpy, python, DataLoader workers)
    test_after_fit: bool = True  # run trainer.test with the best checkpoint after fit
    preemptible: bool = True  # false: no signal handling, no per-step stop agreement (benchmarks, opt-out)
    # How long a rank waits in a collective for the others before the job fails. A rank that
    # exits is noticed at once (torchrun, srun --kill-on-bad-exit); this bounds a rank that hangs.
    collective_timeout_s: int = bounded(600, at_least(1, "{value}: must be at least 1 second"))
    # Fetch every training sample under its own seed, from (seed, epoch, sample index), and run
    # each epoch of a stream (IterableDataset) under its own, from (seed, epoch, rank, worker):
    # random augmentation, in the workers or not, then draws the same in every attempt.
    seed_per_sample: bool = True
    # DDP keeps one gradient-bucket layout for the whole run, so a resumed attempt sums gradients
    # in the same order (exact resume at 3+ ranks). False: DDP's own layout, rebuilt after the first
    # step of every attempt (a resumed run then differs from an uninterrupted one in the last bits).
    fixed_ddp_buckets: bool = True
    find_unused_parameters: bool = False  # DDP's: true if some parameters get no gradient in a step (costs a graph walk a step)
    # Copy the job's own code (its modules in the submit directory) into the run directory at submit;
    # every attempt imports that copy: a requeue trains the code submitted. False: the directory live.
    snapshot_code: bool = True
    fingerprints: bool = False  # per-batch digests of every piece of state in fingerprints/ (what `launch verify` compares)
    drill_preempt_at_steps: list[int] = field(default_factory=list)  # a drill: stop as if preempted after each of these steps
    drill_kill_at_step: int = bounded(0, NOT_NEGATIVE)  # a drill: SIGKILL every process of the run (local) at this step
    # Automatic restart from the newest complete checkpoint after a failed attempt, at most this often
    max_restarts: int = bounded(3, NOT_NEGATIVE)
    # What is restarted. "infrastructure": a rank killed (a signal, out of memory), a native crash, a
    # hang, a lost peer or node, a failed pre-flight check; "any": also the job's own exceptions; "never".
    restart_on: Literal["infrastructure", "any", "never"] = "infrastructure"
    # Restarts stop when this many attempts in a row fail the same way (the same error, rank and
    # step), none getting further: a fault in the job or its data, which a restart repeats. 0: never.
    max_identical_failures: int = bounded(2, Bound(lambda v: not _number(v) or v == 0 or v >= 2,
                                                   "{value}: use 0 (off) or 2 or more"))
    # A rank without progress (a batch done) this long stalls the run: the local supervisor stops it
    # and it restarts as an infrastructure failure. Longer than the slowest step (status shows it).
    stall_timeout_s: int = bounded(120, at_least(10, "{value}: must be at least 10 seconds"))
    # The same before an attempt's first training step, once a rank made progress (a restore, a
    # validation batch): longer, since a first step may compile for many minutes.
    first_step_timeout_s: int = bounded(1800, at_least(10, "{value}: must be at least 10 seconds"))
    # A rank whose own compute a step (its wait for the others left out) is above this many times
    # the other ranks' median is a straggler: an event and a status line (docs/health.md). 0: off.
    straggler_factor: float = bounded(1.2, OFF_OR_ABOVE_ONE)
    straggler_exclude_factor: float = bounded(0.0, OFF_OR_ABOVE_ONE)  # a straggler this much slower: a bad node (0: off)
    preload_ranks: bool | Literal["auto"] = "auto"  # fork ranks from one process that imported torch; auto: ranks >= cores
    tuned_allocator: bool = True  # glibc's malloc keeps freed memory to reuse, not page-faulted back each step (docs/failures.md)
    preflight: bool = True  # check each rank's device, a collective, the run directory (and node_check) first
    # A plain Lightning script instead of [model] and [data] (`launch submit train.py -- ARGS` writes
    # these two), relative to the submit directory: every Trainer it builds is launch's (docs/scripts.md).
    script: str = ""
    args: list[str] = field(default_factory=list)  # the script's command-line arguments (its sys.argv[1:])


@dataclass(frozen=True)
class ComponentSection:
    """A LightningModule or LightningDataModule: registered name or import path, plus kwargs."""

    class_path: str  # a registered name (mlp, cnn, resnet18; digits, mnist, cifar10) or "module:Class"
    init_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the class


@dataclass(frozen=True)
class TrainerSection:
    max_epochs: int | None = bounded(None, NOT_NEGATIVE)  # the Trainer's arguments of the same names
    min_epochs: int | None = bounded(None, NOT_NEGATIVE)
    max_steps: int = bounded(-1, at_least(-1, "{value}: use -1 (no limit) or a positive number"))
    precision: Precision = "32-true"  # "16-mixed", "bf16-mixed" on GPUs
    accumulate_grad_batches: int = bounded(1, AT_LEAST_ONE)
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: Literal["norm", "value"] = "norm"
    limit_train_batches: int | float | None = bounded(None, *BATCHES)
    limit_val_batches: int | float | None = bounded(None, *BATCHES)
    limit_test_batches: int | float | None = bounded(None, *BATCHES)
    val_check_interval: int | float | None = None
    check_val_every_n_epoch: int | None = bounded(1, at_least(1, "{value}: must not be negative"))
    num_sanity_val_steps: int = 2
    log_every_n_steps: int = 50
    deterministic: bool = False
    benchmark: bool | None = None
    fast_dev_run: bool | int = False
    overfit_batches: int | float = bounded(0.0, *BATCHES)
    enable_model_summary: bool = True
    enable_progress_bar: bool = True
    profiler: Literal["simple", "advanced", "pytorch"] | None = None  # report in the run's profiler/ folder


@dataclass(frozen=True)
class ResourcesSection:
    nodes: int = bounded(1, AT_LEAST_ONE)  # --nodes
    # None: the profile's GPUs (0 on a CPU-only machine)
    gpus_per_node: int | None = bounded(None, at_least(0, "{value}: must be 0 or more"))
    # CPU runs only; None: 2, so DDP is exercised by default
    procs_per_node: int | None = bounded(None, AT_LEAST_ONE)
    cpus_per_task: int | None = bounded(None, AT_LEAST_ONE)  # also sets OMP_NUM_THREADS (local: cores / processes)
    mem: str | None = None  # per node, e.g. "64G"
    time: str | None = None  # "HH:MM:SS", "D-HH:MM:SS" or minutes


@dataclass(frozen=True)
class CheckpointSection:
    monitor: str | None = None  # ModelCheckpoint's metric (epoch and validation ends)
    mode: Literal["min", "max"] = "min"
    save_top_k: int = bounded(1, at_least(-1, "{value}: use -1 (all), 0 or a positive number"))
    save_last: bool = True  # last.ckpt is written at the end of fit in any case
    filename: str | None = None
    every_n_epochs: int | None = None
    # launch's periodic full-state checkpoint (checkpoints/resume.ckpt): every N optimizer steps and/or
    # every N minutes (0: off; "auto": from the run's save time and failure rate, Young/Daly), at the
    # first batch boundary it can resume exactly from
    every_n_train_steps: int | None = bounded(None, AT_LEAST_ONE)
    every_n_minutes: float | Literal["auto"] = bounded("auto", NOT_NEGATIVE)


@dataclass(frozen=True)
class EarlyStoppingSection:
    monitor: str | None = None  # setting it turns early stopping on
    patience: int = bounded(3, NOT_NEGATIVE)
    min_delta: float = 0.0
    mode: Literal["min", "max"] = "min"


@dataclass(frozen=True)
class OptimizerSection:
    """Setting `name` replaces the model's own configure_optimizers."""

    name: Literal["adam", "adamw", "sgd"] | None = None
    lr: float = bounded(1e-3, POSITIVE)
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd only
    nesterov: bool = False  # sgd only


@dataclass(frozen=True)
class SchedulerSection:
    """An LR scheduler for the [optimizer]; `name` turns it on."""

    name: Literal["step", "cosine", "onecycle", "plateau"] | None = None
    interval: Literal["step", "epoch"] = "epoch"  # onecycle always steps per batch
    step_size: int = bounded(10, AT_LEAST_ONE)  # step: every step_size intervals, lr *= gamma
    gamma: float = 0.1
    t_max: int | None = None  # cosine: intervals per cycle (default: the whole run)
    eta_min: float = 0.0  # cosine
    max_lr: float | None = None  # onecycle: peak lr (default: optimizer.lr)
    pct_start: float = 0.3  # onecycle
    monitor: str | None = None  # plateau: the metric it watches (required)
    mode: Literal["min", "max"] = "min"  # plateau
    factor: float = 0.1  # plateau
    patience: int = 10  # plateau


@dataclass(frozen=True)
class SWASection:
    """Stochastic weight averaging; setting `swa_lrs` turns it on."""

    swa_lrs: float | None = bounded(None, POSITIVE)
    # an epoch, or a fraction of max_epochs
    swa_epoch_start: int | float = bounded(
        0.8, fraction("{value}: a fraction must be between 0 and 1 (or give an epoch)", open_ends=True))
    annealing_epochs: int = 10
    annealing_strategy: Literal["cos", "linear"] = "cos"


@dataclass(frozen=True)
class WandbSection:
    """[logging.wandb]: one W&B run for the whole launch run (every requeue, restart and resume)."""

    project: str
    entity: str | None = None
    name: str | None = None  # default: the job name
    tags: list[str] = field(default_factory=list)
    mode: Literal["online", "offline", "disabled"] = "online"  # $WANDB_MODE wins, as in W&B


@dataclass(frozen=True)
class MLflowSection:
    """[logging.mlflow]: one MLflow run for the whole launch run."""

    tracking_uri: str | None = None  # default: a file store in the run directory (mlruns/)
    experiment: str | None = None  # default: the job name


@dataclass(frozen=True)
class LoggingSection:
    tensorboard: bool = True
    csv: bool = True
    log_lr: bool = True  # the learning rate of every param group (when an optimizer is logged)
    grad_norm: bool = False  # the 2-norm of the gradients, per parameter and in total
    histograms: bool = False  # TensorBoard histograms of every parameter, each epoch
    hparams: bool = True  # the resolved config in TensorBoard's HPARAMS tab, with hp_metric
    hp_metric: str | None = None  # the metric shown as hp_metric (default: checkpoint.monitor's best, else val_loss)
    loss_curve: bool = True  # loss_curve.png in the run directory at the end
    wandb: WandbSection | None = None
    mlflow: MLflowSection | None = None


@dataclass(frozen=True)
class PerformanceSection:
    """Opt-in speed settings (see bench/README.md for what each gave)."""

    channels_last: bool = False  # convolution weights in NHWC: faster convolutions on tensor-core GPUs
    compile: bool = False  # torch.compile the model's forward, static shapes (a one-time compile cost)


@dataclass(frozen=True)
class StrategySection:
    """How the ranks share the model: DDP (a full copy on each) or FSDP (each holds a shard)."""

    name: Literal["ddp", "fsdp"] = "ddp"
    # FSDP: the module classes that become their own shard units (by class name; the root is always
    # one). Empty: each direct child of the model that holds parameters. Ignored when the model
    # shards itself in configure_model.
    shard_modules: list[str] = field(default_factory=list)
    # FSDP on GPUs: parameters (and the forward/backward) in this dtype, gradients reduced in float32
    mixed_precision: Literal["none", "bf16", "fp16"] = "none"
    # FSDP: recompute each shard unit's activations in the backward instead of keeping them
    activation_checkpointing: bool = False
    # The periodic checkpoint (checkpoint.every_n_*) is copied off the training path and written in
    # the background while training goes on; preemption and epoch-end saves stay synchronous.
    async_checkpoints: bool = True


# --------------------------------------------------------------------------- the cluster profile


@dataclass(frozen=True)
class ClusterProfile:
    backend: Literal["local", "slurm"] = "local"  # "local": torchrun on this machine
    gpus_per_node: int | Literal["auto"] = bounded("auto", at_least(0, "must be 0 or more, or 'auto'", only=int))  # auto: count
    cpus_per_node: int | None = None
    mem_per_node: str | None = None
    mem: str | None = None  # memory to request per node when the job does not say (resources.mem)
    gpu_bind: str | None = None  # srun --gpu-bind for GPU runs, e.g. "closest" (srun mode: one GPU a rank)
    max_time: str | None = None  # limits, checked before submission
    max_nodes: int | None = None
    node_mtbf_hours: float = bounded(1000.0, POSITIVE)  # a node's mean time between failures (auto checkpoints)
    partition: str | None = None  # required for backend = "slurm"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    sbatch_extra: list[str] = field(default_factory=list)  # more sbatch options, one an item
    setup: list[str] = field(default_factory=list)  # shell lines run in the batch script first (they are code)
    env: dict[str, str] = field(default_factory=dict)  # environment variables for every rank
    shared_filesystem: bool = True  # true: prepare_data once a job; false: once a node
    # A site's node health check (argv), run once a node before training: non-zero fails the node
    node_check: list[str] = field(default_factory=list)
    launch_mode: Literal["srun", "torchrun"] = "srun"  # srun: a task a rank; torchrun: a task a node
    signal: Literal["USR1", "USR2", "TERM", "INT", "HUP"] = "USR1"  # asked of SLURM: --signal=SIG@signal_grace_s
    signal_grace_s: int = bounded(120, at_least(1, "must be at least 1 second"))
    # SLURM holds a requeued job until requeue + cred_expire + 1 s (121 s by default). True: the end
    # hook sets its StartTime to now + 2 s, safe for its credentials (docs/cluster.md). False: SLURM's.
    shorten_requeue_hold: bool = True
    python: str | None = None  # interpreter on the compute nodes; None: the submitting one ("python" in a container)
    runs_dir: str | None = None  # where run directories go (default ./runs)
    rdzv_port: int = 29400  # torchrun mode: the base rendezvous port
    # Containers (SLURM): the ranks run in the image; launch's hooks in the batch script run on the
    # host (the submitting interpreter). pyxis/enroot through srun's --container-* options:
    container_image: str | None = None
    container_mounts: list[str] = field(default_factory=list)  # "SRC:DST[:FLAGS]"; the submit and run dirs are added
    container_workdir: str | None = None  # default: the submit directory
    # ... or Apptainer/Singularity: `apptainer exec [--nv] --bind ... IMAGE python ...` in each task
    apptainer_image: str | None = None
    apptainer_binds: list[str] = field(default_factory=list)  # "SRC[:DST[:OPTS]]"; the submit and run dirs are added

    @property
    def container(self) -> str | None:
        """The container runtime the ranks run in: "pyxis", "apptainer", or None."""
        return "pyxis" if self.container_image else "apptainer" if self.apptainer_image else None


@dataclass(frozen=True)
class RunSection:
    """Filled in at submission; frozen into the run directory with everything else."""

    id: str = ""
    dir: str = ""
    workdir: str = ""
    python: str = ""
    launcher_python: str = ""  # the batch script's hooks, on the host, when the ranks run in a container
    dependency: str = ""  # SLURM --dependency from `launch submit --after` (afterok:ID,...)
    profile: str = DEFAULT_PROFILE
    job_file: str = ""
    rdzv_port: int = 0


@dataclass(frozen=True)
class JobConfig:
    job: JobSection
    model: ComponentSection | None = None  # required, unless job.script names a script
    data: ComponentSection | None = None  # required, unless job.script names a script
    trainer: TrainerSection = field(default_factory=TrainerSection)
    resources: ResourcesSection = field(default_factory=ResourcesSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    early_stopping: EarlyStoppingSection = field(default_factory=EarlyStoppingSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    lr_scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    swa: SWASection = field(default_factory=SWASection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    performance: PerformanceSection = field(default_factory=PerformanceSection)
    strategy: StrategySection = field(default_factory=StrategySection)
    # [[callbacks]] and [[loggers]]: the user's own, as class_path + init_args (a bare name is
    # Lightning's: "LearningRateMonitor", "WandbLogger"); callbacks' state is in every checkpoint.
    callbacks: list[ComponentSection] = field(default_factory=list)
    loggers: list[ComponentSection] = field(default_factory=list)
    cluster: ClusterProfile = field(default_factory=ClusterProfile)
    run: RunSection = field(default_factory=RunSection)

    @property
    def uses_gpus(self) -> bool:
        return bool(self.resources.gpus_per_node)

    @property
    def procs_per_node(self) -> int:
        """Processes (ranks) per node: one per GPU, or the CPU process count."""
        if self.resources.gpus_per_node:
            return self.resources.gpus_per_node
        return self.resources.procs_per_node or 1

    @property
    def world_size(self) -> int:
        return self.resources.nodes * self.procs_per_node


# Trainer arguments launch sets itself, from [resources] and the profile.
OWNED_TRAINER_KEYS = {
    "devices": "set resources.gpus_per_node (--gpus) or resources.procs_per_node (--procs)",
    "num_nodes": "set resources.nodes (--nodes)",
    "accelerator": "launch uses GPUs when resources.gpus_per_node > 0, else the CPU",
    "strategy": "use the [strategy] section (name = \"ddp\" or \"fsdp\")",
    "plugins": "launch chooses the cluster environment from how the ranks were started",
    "logger": "use the [logging] section",
    "default_root_dir": "everything goes to the run directory",
}
