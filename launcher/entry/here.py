"""`python -m launcher.entry.here RUN_DIR`: a run inside the current SLURM allocation
(`launch submit --here`, from salloc or an interactive job).

It runs the run's own batch script with bash: the #SBATCH lines are comments there, and its srun
line becomes a step of this allocation. After a preemption the end hook records the requeue
(it cannot requeue an interactive allocation) and the script runs again as a new step, which
resumes; `launch preempt` and `launch cancel` reach the ranks through srun, which forwards
signals to its tasks. The allocation itself is never cancelled or requeued.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from launcher.config import load_resolved
from launcher.events import Event
from launcher.lifecycle import names, this_attempt
from launcher.rundir import RunDir
from launcher.slurm_env import current_job_id, queue_state


def sruns_of(pid: int) -> list[int]:
    """The srun processes the batch script started (its direct children)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    found = []
    for child in children:
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == "srun":
                found.append(int(child))
        except OSError:
            continue
    return found


def main(argv: list[str]) -> int:
    run = RunDir(Path(argv[0]).resolve())
    cfg = load_resolved(run.config)
    log = run.task_log(current_job_id() or "", 0)
    script: subprocess.Popen | None = None

    def forward(signum: int, frame: Any) -> None:
        for pid in sruns_of(script.pid) if script else []:
            os.kill(pid, signum)

    preempt = getattr(signal, f"SIG{cfg.cluster.signal}")
    for signum in {signal.SIGTERM, preempt}:
        signal.signal(signum, forward)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the interactive shell may close; the allocation decides
    env = {**os.environ, "LAUNCH_HERE": "1", "SLURM_OPEN_MODE": "append"}
    code = 1
    for _attempt in itertools.count():
        with open(log, "ab") as out:
            script = subprocess.Popen(["bash", str(run.batch_script)], stdout=out, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=cfg.run.workdir or None, env=env)
            code = script.wait()
        attempt = names(this_attempt(run.history()))
        if Event.CANCEL_REQUESTED in attempt:  # launch cancel: the ranks saved; the run ends here
            run.add_event(Event.CANCELLED, slurm_job_id=current_job_id())
            return 0
        if Event.REQUEUED not in attempt:  # preempted, or restarting after a failure: the next step resumes
            return code
        if queue_state(current_job_id() or "") != "RUNNING":
            run.add_event(Event.FAILED, exit_code=code or 1, rank=None,
                          error=f"allocation {current_job_id()} ended before the run did; continue it with: "
                                f"launch resume {run.path}")
            return 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
