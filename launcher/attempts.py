"""How an attempt ended, and what follows: its cause from the ranks' own records (errors/), the
restart policy (job.restart_on, job.max_restarts), and the events that record it; also what a
requeue records of its preemption and whether the preemption fit in the grace."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from launcher.events import Event, EventRecord, Preempted, Requeued, Restarted, Stalled, Started, Trained
from launcher.lifecycle import last_event, starts, this_attempt
from launcher.records import AliveMarker, Progress, RankError
from launcher.rundir import RunDir

# A rank that fails in a collective because another rank died or hung: an echo, not the cause.
ECHO = re.compile(r"Connection closed by peer|Connection reset by peer|Broken pipe|[Tt]imed out|timeout|"
                  r"NCCL communicator was aborted|ProcessGroup.*abort|Gloo connectFullMesh failed|"
                  r"another rank failed its pre-flight check")
# An echo that says the rank waited job.collective_timeout_s for the others and gave up. gloo words
# it "Timed out waiting Nms for recv" or, on a pair an earlier timeout closed, "Application timeout
# caused pair closure"; NCCL's watchdog "... ran for N milliseconds before timing out".
COLLECTIVE_TIMEOUT = re.compile(r"[Tt]imed out|[Tt]imeout|timing out")


def first_error(run: RunDir, since: float) -> RankError | None:
    """The cause of this attempt's failure, from the ranks' own records.

    In order: the earliest Python error that is not an echo of another rank's failure; then the
    ranks that died without a word (their alive marker is still there: killed, out of memory,
    crashed in native code, or hung and stopped); then the earliest echo.
    """
    errors = timed_rank_errors(run, since)
    dead = dead_ranks(run, since)
    causes = [e for _, e in errors if not ECHO.search(e.text)]
    if causes:
        return causes[0]
    if dead:
        dead.sort(key=lambda d: d.rank)
        first = dead[0]
        others = f" (also ranks {', '.join(str(d.rank) for d in dead[1:])})" if len(dead) > 1 else ""
        echo = f"; then rank {errors[0][1].rank}: {errors[0][1].type}: {errors[0][1].message[:160]}" if errors else ""
        timed_out = [e for _, e in errors if COLLECTIVE_TIMEOUT.search(e.text)]
        if timed_out:
            return RankError(first.rank, first.host, "Hung",
                             f"stopped responding: rank {timed_out[0].rank} waited job.collective_timeout_s for "
                             "it in a collective and gave up, then it was stopped (a hang in its code or data, or "
                             f"its node was lost); its stack is in logs/rank-{first.rank}.log{others}{echo}")
        return RankError(first.rank, first.host, "Died",
                         "ended without a Python error: killed by a signal (or out of memory), crashed in "
                         f"native code, or hung and was stopped; see logs/rank-{first.rank}.log{others}{echo}")
    return errors[0][1] if errors else None


def timed_rank_errors(run: RunDir, since: float) -> list[tuple[float, RankError]]:
    """This attempt's rank errors (errors/rank-N.json written since `since`), oldest first, with
    their times."""
    errors: list[tuple[float, RankError]] = []
    for path in run.errors.glob("rank-*.json"):
        try:
            mtime = path.stat().st_mtime
        except OSError:
            continue
        record = RankError.read(path) if mtime + 1 >= since else None
        if record is not None:
            errors.append((mtime, record))
    return sorted(errors, key=lambda r: r[0])


def rank_errors(run: RunDir, since: float) -> list[RankError]:
    return [e for _, e in timed_rank_errors(run, since)]


def preflight_failures(run: RunDir, since: float) -> list[RankError]:
    """This attempt's ranks whose own pre-flight check failed (runtime/preflight.py), not the
    ranks that stopped because another one failed."""
    found = [e for e in rank_errors(run, since) if e.type == "PreflightFailed" and not ECHO.search(e.message)]
    return sorted(found, key=lambda r: r.rank if r.rank is not None else -1)


def dead_ranks(run: RunDir, since: float) -> list[AliveMarker]:
    """The alive markers of this attempt's ranks that ended without a Python error: killed,
    crashed in native code, or on a node that died."""
    dead = []
    for path in run.errors.glob("rank-*.alive"):
        try:
            recent = path.stat().st_mtime + 1 >= since
        except OSError:
            continue
        marker = AliveMarker.read(path) if recent else None
        if marker is not None:
            dead.append(marker)
    return dead


# Failures of the machinery rather than of the job's code: what job.restart_on = "infrastructure" retries.
INFRASTRUCTURE = {"Died", "Hung", "Stalled", "NodeLost", "PreflightFailed"}
INFRASTRUCTURE_ERROR = re.compile(r"NCCL|[Gg]loo|DistBackendError|DistNetworkError|ProcessGroup|[Cc]onnection (reset|"
                                  r"closed|refused)|Broken pipe|[Tt]imed out|out of memory|CUDA error|ECC")


def failure_kind(err: RankError | None) -> str:
    """"infrastructure" or "code": what a failed attempt's first error says about retrying it."""
    if err is None:  # the ranks exited non-zero without a word: killed from outside
        return "infrastructure"
    return "infrastructure" if err.type in INFRASTRUCTURE or INFRASTRUCTURE_ERROR.search(err.text) else "code"


@dataclass(frozen=True)
class Ending:
    """How an attempt ended: finished, restarting (job.restart_on), or failed; and a line saying so."""

    finished: bool
    restarting: bool
    summary: str


SAME_STEP = 2  # steps: two failures this close are at the same step (progress.json trails by a write)
VERB = {"Hung": "hung", "Stalled": "stalled", "Died": "died"}


def restart_loop(earlier: Sequence[Restarted], err: RankError | None, reached: int | None, allowed: int) -> str | None:
    """Why restarting again would loop, or None: the last `allowed` attempts (this one and the
    restarted ones before it) failed the same way (the same error type on the same rank) at the
    same step, and this one got no further than the one before. A lost node is never a loop (the
    next job runs without it); a run that progresses between failures keeps its restarts."""
    if allowed < 2 or err is None or err.type == "NodeLost" or reached is None or len(earlier) < allowed - 1:
        return None
    before = earlier[len(earlier) - (allowed - 1):]
    if not all(e.error_type == err.type and e.rank == err.rank and e.step_reached is not None
               and abs(e.step_reached - reached) <= SAME_STEP for e in before):
        return None
    if reached > before[-1].step_reached + SAME_STEP:  # type: ignore[operator]
        return None
    who = f"rank {err.rank}" if err.rank is not None else "the run"
    verb = VERB.get(err.type, f"failed with {err.type}")
    where = "a hang in the job" if err.type in ("Hung", "Stalled") else "a fault in the job or its data"
    return (f"{who} {verb} at step {reached} in {allowed} attempts in a row: {where}, not in the cluster; "
            "restarts stopped (job.max_identical_failures)")


def record_end(run: RunDir, exit_code: int, started_at: float, elapsed_s: float,
               restart_on: str = "never", max_restarts: int = 0, lost_nodes: Sequence[str] = (),
               max_identical_failures: int = 0) -> Ending:
    """Append `finished`, `restarted` or `failed` for an attempt whose ranks exited with `exit_code`.

    Finished means the ranks exited 0 AND rank zero recorded that training completed. A failure
    the restart policy covers, with restarts left, is `restarted` (the caller starts the run
    again; it resumes from its newest complete checkpoint); otherwise `failed`, listing the causes
    of the earlier restarts too. `lost_nodes` (nodes that no longer answer, found by the SLURM end
    hook) are the cause whatever the ranks said: their ranks died with them, the others echoed it.
    """
    events = run.history()
    progress = Progress.read(run.progress)
    last = last_event(events, Trained)
    if exit_code == 0 and last is not None and not last.interrupted:
        # the run's time, not this attempt's: a run requeued five times took all of it
        now = time.time()
        begun = [e.at for e in events if e.event in (Event.SUBMITTED, Event.STARTED) and e.at is not None]
        run_s = round(now - begun[0], 1) if begun else elapsed_s
        started = last_event(events, Started)
        attempt_s = round(now - started.at, 1) if started and started.at is not None else elapsed_s
        attempts = starts(events)
        run.add_event(Event.FINISHED, elapsed_s=run_s, global_step=last.global_step, attempt_s=attempt_s,
                      attempts=attempts)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(last.metrics.items()))
        took = f"{run_s} s" + (f" ({attempts} attempts; the last {attempt_s} s)" if attempts > 1 else "")
        return Ending(True, False, f"completed in {took}: step {last.global_step}, {shown}")
    err = first_error(run, started_at)
    stalled = last_event(this_attempt(events), Stalled)
    if stalled is not None:  # the supervisor stopped it: that is the cause, whatever the ranks said then
        err = RankError(stalled.rank, stalled.host, "Stalled",
                        f"its node went silent at step {stalled.step} while another rank died of a lost peer; stopped"
                        if stalled.node_silent else
                        f"no progress for {stalled.idle_s} s since step {stalled.step} "
                        f"({'job.first_step_timeout_s' if stalled.before_first_step else 'job.stall_timeout_s'} = "
                        f"{stalled.timeout_s}); stopped")
    if lost_nodes:
        on_them = sorted(d.rank for d in dead_ranks(run, started_at) if d.host in lost_nodes)
        err = RankError(on_them[0] if on_them else None, ",".join(lost_nodes), "NodeLost",
                        f"node {', '.join(lost_nodes)} lost at step {progress.global_step if progress else '?'} "
                        "(its slurmd does not answer)"
                        + (f"; rank(s) {', '.join(map(str, on_them))} died with it" if on_them else ""))
    if err and err.type == "NodeLost":
        message = err.message
    elif err:
        message = f"rank {err.rank} ({err.host}): {err.type}: {err.message}"
    elif exit_code == 0:
        message = "the ranks exited without completing training"
    else:
        message = f"the ranks exited with {exit_code}; see {run.logs}"
    earlier = [e for e in events if isinstance(e, Restarted)]
    kind = failure_kind(err) if (err or exit_code) else "code"
    reached = progress.global_step if progress else None  # how far this attempt got (the ledger's recomputed steps)
    covered = restart_on != "never" and (restart_on == "any" or kind == "infrastructure")
    loop = restart_loop(earlier, err, reached, max_identical_failures) if covered else None
    if covered and not loop and len(earlier) < max_restarts:
        run.add_event(Event.RESTARTED, restart=len(earlier) + 1, cause=message, kind=kind, exit_code=exit_code,
                      rank=err.rank if err else None, error_type=err.type if err else None, elapsed_s=elapsed_s,
                      step_reached=reached)
        return Ending(False, True, f"failed after {elapsed_s} s ({message}): restart {len(earlier) + 1} of "
                                   f"{max_restarts} (job.restart_on = {restart_on!r})")
    if loop:
        message = f"{loop}: {message}"
    if earlier:
        message += f"; after {len(earlier)} restart(s): " + "; ".join(e.cause[:200] for e in earlier)
    run.add_event(Event.FAILED, elapsed_s=elapsed_s, exit_code=exit_code or 1,
                  rank=err.rank if err else None, error=message, step_reached=reached)
    return Ending(False, False, f"failed after {elapsed_s} s: {message}")


def requeue_fields(preempted: Preempted | None) -> dict[str, Any]:
    """What a `requeued` event records of the preemption it follows: the step saved, and the time
    from the signal to the attempt's exit (what `grace_warning` compares with the grace)."""
    info = preempted or Preempted()
    return {"after_step": info.step,
            "signal_to_exit_s": round(time.time() - info.signal_at, 3) if info.signal_at else None}


def grace_warning(events: Sequence[Mapping[str, Any] | EventRecord], grace_s: int) -> str | None:
    """A warning when the last preemption took more than half the grace (signal to exit, saving
    included): the next one may not fit, and a save cut short by SIGKILL is lost work."""
    last = last_event(events, Requeued)
    used = last.signal_to_exit_s if last else None
    if used is None or used <= grace_s / 2:
        return None
    return (f"the last preemption took {used:.0f} s from the signal to the exit, more than half of the "
            f"{grace_s} s grace (cluster.signal_grace_s): raise the grace, or make the checkpoint smaller or faster")


def record_not_requeued(run: RunDir, exit_code: int) -> str:
    """A preempted attempt that could not go back in the queue: failed, with the command that
    continues it."""
    message = f"preempted and saved, but not requeued; continue it with: launch resume {run.path}"
    run.add_event(Event.FAILED, exit_code=exit_code or 1, rank=None, error=message)
    return message
