"""Every rank's heartbeat, sent every few seconds by a thread: through its node's leader into
`heartbeats/node-K.json`, one file a node (runtime/beat_channel.py).

It carries the rank's last progress (a training, validation or test batch done: `progress_at`,
`step`) and the time of the beat itself (`beat_at`), and the slowest training step seen. A rank
whose loop is stuck (waiting in a collective for a peer, or in its own code) keeps beating with an
old `progress_at`; a rank that is stopped, killed or on a lost node stops beating. `launch status`
names a stalled rank from these files (launcher/stalls.py), and the local supervisor
(or, on SLURM, the batch script's watcher: launcher/entry/watch.py) stops and restarts a run
stalled longer than `job.stall_timeout_s`.

It also carries the rank's own compute per training step (`compute_s`), which names stragglers
(launcher/stragglers.py): from the end of the previous step (the data fetch is the rank's own
work) to the last gradient its backward produced. DDP launches each gradient bucket's all-reduce
as the bucket fills and waits for them all only after the backward, so that span leaves out the
wait for slower ranks, which is what makes every rank's whole step equally long. The times come
from the host's clock, so on a GPU they are when the host queued the work, not when it ran.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import deque
from dataclasses import replace
from typing import Any

from launcher.records import Heartbeat as HeartbeatRecord
from launcher.rundir import RunDir
from launcher.runtime.beat_channel import BeatChannel
from launcher.runtime.lightning_api import Callback, Trainer
from launcher.slurm_env import node_name

COMPUTE_WINDOW = 20  # a rank's compute_s is the median of its last this many training steps


class Heartbeat(Callback):
    def __init__(self, run: RunDir, compute: bool = True) -> None:
        self.run, self.compute = run, compute  # compute: measure compute_s (job.straggler_factor > 0)
        self.channel: BeatChannel | None = None  # once the Trainer knows the rank (on_fit_start)
        # the SLURM step the rank runs in: what a stall stops
        step = f"{os.environ.get('SLURM_JOB_ID')}.{os.environ['SLURM_STEP_ID']}" if os.environ.get("SLURM_STEP_ID") else None
        # Replaced whole (never changed in place), so the beating thread always writes one consistent record.
        self.record = HeartbeatRecord(rank=0, host=node_name(), progress_at=time.time(), slurm_step=step, pid=os.getpid())
        self._step_started = 0.0
        self._stop = threading.Event()
        # straggler watch: the end of the previous step, the last gradient of this one, the window
        self._step_ended: tuple[int, float] | None = None  # (batch_idx, time)
        self._grad_at = 0.0
        self._computes: deque[float] = deque(maxlen=COMPUTE_WINDOW)
        self._measured = 0
        self._hooks: list[Any] = []
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        assert self.channel is not None
        while not self._stop.is_set():
            self._send()
            self._stop.wait(self.channel.period)

    def _send(self) -> HeartbeatRecord:
        beat = replace(self.record, beat_at=time.time())
        try:
            assert self.channel is not None
            self.channel.publish(beat)
        except OSError:
            pass  # a full disk must not end training; the next beat tries again
        return beat

    def progressed(self, trainer: Trainer) -> None:
        self.record = replace(self.record, step=int(trainer.global_step), progress_at=time.time())

    def on_fit_start(self, trainer: Trainer, pl_module: Any) -> None:
        if self.channel is None:
            self.channel = BeatChannel(self.run, trainer.global_rank, trainer.local_rank, trainer.node_rank,
                                       self.record.host, local_ranks=trainer.num_devices)
        self.record = replace(self.record, rank=trainer.global_rank)
        self.progressed(trainer)
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="launch-heartbeat", daemon=True)
            self._thread.start()

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        self.progressed(trainer)  # the step restored from a checkpoint
        if self.compute and trainer.world_size > 1 and not self._hooks:
            self._hooks = [p.register_post_accumulate_grad_hook(self._gradient)
                           for p in pl_module.parameters() if p.requires_grad]

    def _gradient(self, param: Any) -> None:
        self._grad_at = time.monotonic()

    def on_train_end(self, trainer: Trainer, pl_module: Any) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def on_train_batch_start(self, trainer: Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._step_started = time.monotonic()

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        now = time.monotonic()
        took = now - self._step_started
        slowest = max(self.record.slowest_step_s, round(took, 3))
        compute = self.record.compute_s
        if self._hooks and self._grad_at > self._step_started:
            # from the previous step's end when it was the batch before (the fetch counts), else
            # from this one's start (after a validation, at an epoch's or an attempt's first batch)
            ended = self._step_ended
            begun = ended[1] if ended is not None and ended[0] == batch_idx - 1 else self._step_started
            self._computes.append(self._grad_at - begun)
            self._measured += 1
            if self._measured >= COMPUTE_WINDOW // 2 and self._measured % 5 == 0:  # 10 steps in, then every 5
                compute = round(statistics.median(self._computes), 4)
        self._step_ended = (batch_idx, now)
        # watched from its first step (a first step may compile)
        self.record = replace(self.record, step=int(trainer.global_step), progress_at=time.time(),
                              slowest_step_s=slowest, stepped=True, compute_s=compute)

    def on_validation_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self.progressed(trainer)

    def on_test_batch_end(self, trainer: Trainer, *args: Any) -> None:
        self.progressed(trainer)

    def on_save_checkpoint(self, trainer: Trainer, *args: Any) -> None:
        self.progressed(trainer)

    def finish(self) -> None:
        """Training (and its test) is over, or stopped for a preemption: the last beat says so, and
        the rank is no longer watched (a long last save, the records and the exit are not a stall)."""
        self._stop.set()
        if self._thread is None:  # fit never started: there is no heartbeat of this rank to end
            return
        self._thread.join()
        self.record = replace(self.record, done=True)
        assert self.channel is not None
        self.channel.drain(self._send())  # a leader waits for its node's other ranks to be done


def finish_heartbeat(trainer: Trainer) -> None:
    for callback in trainer.callbacks:
        if isinstance(callback, Heartbeat):
            callback.finish()
