"""`launch verify JOB`: certify that a job resumes bit for bit, or say what breaks it.

Three short runs of the job on this machine (local backend, the same world size), side by side:
a reference; one preempted N times at steps drawn at random mid-epoch; one whose every process
is SIGKILLed at a random step and continued by `launch resume` from its newest periodic
checkpoint. The stops are drills at the drawn steps (job.drill_*: the real save, agreement,
requeue and resume paths; only the signal's delivery is skipped). Every rank records a digest
of each piece of state at every batch (job.fingerprints), so a difference is traced to the
first step and the first piece of state that diverged, with what to change.
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from launcher import backends, config
from launcher.config import JobConfig
from launcher.errors import LaunchError
from launcher.lifecycle import State
from launcher.rundir import RunDir
from launcher.submission import resume_run, start_run

# What each fingerprint field is, and what to change when it is the first to differ.
ADVICE = {
    "data": ("the batch (data order or content)",
             "the training data is not positioned or drawn the same after a resume: use a map-style dataset with "
             "Lightning's default sampler, a stateful loader (torchdata's StatefulDataLoader), or a stream that is a "
             "function of its epoch (set_epoch), rank and worker, and random augmentation from the global generators "
             "(launch seeds them per sample, and per epoch, rank and worker of a stream), not a generator of your own"),
    # The data of two runs from the same start differs before either was stopped.
    "unseeded": ("the training data ({name}): two runs from the same start drew different batches before anything "
                 "stopped them",
                 "it draws from a source launch does not seed (the OS's entropy, the clock, a generator made without a "
                 "seed, the order of files listed from a directory): draw from torch's, numpy's or Python's global "
                 "generators (launch seeds them per sample, and per epoch, rank and worker of a stream), or seed your "
                 "own from torch.initial_seed() where the stream starts"),
    "rng": ("the {name} random generator's state",
            "something draws from it outside the training step, or keeps a generator of its own: draw in the step, "
            "or keep the generator's state in the module's state_dict"),
    "lr": ("the learning rate", "a scheduler or callback changes the rate from state it does not save: give it "
           "state_dict()/load_state_dict(), or use a [lr_scheduler] of the job file"),
    "metrics": ("the state of the torchmetrics metric `{name}`",
                "a metric updated outside training_step/validation_step, or created anew: make it an attribute of "
                "the module and update it in the step"),
    "attributes": ("the model's attribute `{name}` (outside its state_dict)",
                   "a checkpoint does not hold plain attributes: make it a buffer (self.register_buffer), or save "
                   "and load it in on_save_checkpoint / on_load_checkpoint"),
    "weights": ("the weights", "the previous step's gradients differed: a difference in the forward pass "
                "(randomness, a non-deterministic kernel)"),
    "optimizer": ("the optimizer's state", "the optimizer's state is changed outside optimizer.step() or not saved"),
}
ORDER = ("data", "rng", "lr", "metrics", "attributes", "weights", "optimizer")


@dataclasses.dataclass(frozen=True)
class Divergence:
    run: str  # "preempted" or "killed"
    step: int
    rank: int
    field: str
    name: str
    ours: Any
    reference: Any

    def sentence(self) -> str:
        what, fix = ADVICE[self.field]
        what = what.format(name=self.name)
        shown = ""
        if self.field == "attributes":
            shown = f": {self.ours!r} here, {self.reference!r} in the reference"
        elif self.field == "lr":
            shown = f": {self.ours} here, {self.reference} in the reference"
        return (f"the {self.run} run first differs at step {self.step} (rank {self.rank}): {what}{shown}.\n"
                f"  what to change: {fix}")


def plan(total_steps: int, steps_per_epoch: int, preemptions: int, every: int, rng: random.Random) -> tuple[list[int], int]:
    """Steps to stop at (mid-epoch, apart) and the step to kill at (after a periodic checkpoint)."""
    mid = [s for s in range(2, total_steps - 1) if s % steps_per_epoch not in (0, steps_per_epoch - 1)]
    if len(mid) < preemptions + 1:
        raise LaunchError(f"verify: {total_steps} steps ({steps_per_epoch} an epoch) leave no room for {preemptions} "
                          "mid-epoch stops; raise --epochs or --batches")
    stops = sorted(rng.sample(mid, preemptions))
    kill = rng.choice([s for s in mid if s > every] or mid)
    return stops, kill


def drive(configs: dict[str, JobConfig], runs_dir: Path, job_file: str, say: Callable[[str], None]) -> dict[str, RunDir]:
    """Start the three runs together, continue the killed one after its crash, wait for all."""
    runs = {name: start_run(cfg, runs_dir, job_file) for name, cfg in configs.items()}
    for name, run in runs.items():
        say(f"  {name:<10} {run.path}")
    killed_cfg = configs["killed"]
    marker = runs["killed"].fingerprints / f"killed-at-{killed_cfg.job.drill_kill_at_step}"
    resumed, deadline = False, time.monotonic() + 24 * 3600
    while time.monotonic() < deadline:
        states = {name: backends.status(run) for name, run in runs.items()}
        if not resumed and states["killed"].state == State.FAILED and marker.exists():
            resume_run(runs["killed"], states["killed"].state)  # what `launch resume` does
            resumed = True
            say(f"  killed     every process SIGKILLed at step {killed_cfg.job.drill_kill_at_step}; launch resume")
        elif all(s.terminal for s in states.values()):
            failed = {n: s for n, s in states.items() if s.state != State.COMPLETED}
            if failed:
                raise LaunchError("verify: " + "; ".join(f"the {n} run {s.state}: {s.error}" for n, s in failed.items()))
            if killed_cfg.job.drill_kill_at_step and not resumed:
                raise LaunchError(f"verify: the killed run ended before step {killed_cfg.job.drill_kill_at_step}, where "
                                  "it was to be killed; raise --epochs or --batches")
            return runs
        time.sleep(0.5)
    raise LaunchError("verify: the runs did not end within a day")


def _fingerprints(run: RunDir) -> dict[tuple[int, int], dict[str, Any]]:
    """{(step, rank): record}, the last record of a step counting (a step trained again)."""
    out = {}
    for path in sorted(run.fingerprints.glob("rank-*.jsonl")):
        rank = int(path.stem.split("-")[1])
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by the kill
            out[(record["step"], rank)] = record
    return out


def first_divergence(name: str, run: RunDir, reference: RunDir, first_stop: int) -> Divergence | None:
    """The first step, rank and piece of state where `run` differs from the reference; a batch that
    differs before `first_stop` (the run's first preemption or kill) is data no run can repeat."""
    ours, theirs = _fingerprints(run), _fingerprints(reference)
    for key in sorted(theirs):
        step, rank = key
        if key not in ours:
            return Divergence(name, step, rank, "data", "", "missing", "present")
        a, b = ours[key], theirs[key]
        for field in ORDER:
            if a[field] == b[field]:
                continue
            if field == "data" and step < first_stop:
                return Divergence(name, step, rank, "unseeded", b.get("source", "?"), a[field], b[field])
            if isinstance(b[field], dict):
                names = sorted(k for k in a[field].keys() | b[field].keys() if a[field].get(k) != b[field].get(k))
                return Divergence(name, step, rank, field, names[0], a[field].get(names[0]), b[field].get(names[0]))
            return Divergence(name, step, rank, field, "", a[field], b[field])
    return None


def final_difference(run: RunDir, reference: RunDir) -> str | None:
    """What differs at the end, beyond the per-step fingerprints: weights, optimizer and
    scheduler states, and every logged row."""
    import torch

    a, b = (torch.load(r.last_checkpoint, map_location="cpu", weights_only=False) for r in (run, reference))
    for key in b["state_dict"]:
        if not torch.equal(a["state_dict"][key], b["state_dict"][key]):
            return f"final weights differ: {key}"
    from launcher.runtime.fingerprints import digest_tensors

    for part in ("optimizer_states", "lr_schedulers"):
        if digest_tensors(a.get(part)) != digest_tensors(b.get(part)):
            return f"final {part} differ"
    ours, theirs = run.read_metrics(), reference.read_metrics()
    for i, (x, y) in enumerate(zip(ours, theirs, strict=False)):
        if x != y:
            diff = sorted(k for k in x.keys() | y.keys() if x.get(k) != y.get(k))
            return f"metrics.csv row {i + 1} (step {y.get('step')}) differs in {', '.join(diff)}"
    if len(ours) != len(theirs):
        return f"metrics.csv has {len(ours)} rows, the reference {len(theirs)}"
    return None


def verify(base: JobConfig, runs_dir: Path, job_file: str, preemptions: int, seed: int,
           say: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> tuple[bool, list[str]]:
    """Run the three runs of `base` (already shortened and fingerprinting) and compare them."""
    steps_per_epoch = int(base.trainer.limit_train_batches)
    total = steps_per_epoch * int(base.trainer.max_epochs)
    every = int(base.checkpoint.every_n_train_steps)
    stops, kill = plan(total, steps_per_epoch, preemptions, every, random.Random(seed))
    say(f"verify {base.job.name}: {total} steps ({steps_per_epoch} an epoch) x {base.world_size} ranks; "
        f"preempted at steps {', '.join(map(str, stops))}; every process killed at step {kill} "
        f"(periodic checkpoint every {every} steps); seed {seed}")

    def with_job(**changes: Any) -> JobConfig:
        return dataclasses.replace(base, job=dataclasses.replace(base.job, **changes))

    configs = {"reference": base, "preempted": with_job(drill_preempt_at_steps=stops),
               "killed": with_job(drill_kill_at_step=kill)}
    configs = {n: dataclasses.replace(c, run=dataclasses.replace(c.run, rdzv_port=config.free_port()))
               for n, c in configs.items()}
    runs = drive(configs, runs_dir, job_file, say)
    problems = []
    for name, first_stop in (("preempted", stops[0]), ("killed", kill)):
        found = first_divergence(name, runs[name], runs["reference"], first_stop)
        if found is None:
            end = final_difference(runs[name], runs["reference"])
            if end:
                problems.append(f"the {name} run: {end}")
        else:
            problems.append(found.sentence())
    return not problems, problems
