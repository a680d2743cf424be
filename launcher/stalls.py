"""Stalls: a rank that makes no progress, found from the ranks' heartbeats (runtime/heartbeat.py
writes them), and recorded in one place whoever stops the attempt (the local supervisor, or the
SLURM batch script's watcher: entry/watch.py). `launch status` names one too (report.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from launcher.attempts import ECHO
from launcher.lifecycle import Event
from launcher.records import Heartbeat, RankError, StalledRank
from launcher.rundir import RunDir

HEARTBEAT_S = 5.0  # how often every rank rewrites heartbeats/rank-N.json
STALL_REPORT_S = 30.0  # launch status calls a rank stalled after this long without progress (or 3 slow steps)


def find_stall(beats: Sequence[Heartbeat], now: float, since: float, after_s: float = STALL_REPORT_S,
               first_step_s: float | None = None) -> StalledRank | None:
    """The stalled rank of a running attempt, from its heartbeats (only those written since
    `since`, the attempt's start): a rank without progress for `after_s` (or three of the run's
    slowest steps), if it is past its first step or has stopped beating; or, given `first_step_s`,
    a beating rank that made progress (a restore, a batch) but no first step for that long. A rank
    that stopped beating is named before a rank that beats but waits (for it, usually)."""
    current = [b for b in beats if b.beat_at >= since and not b.done]
    # One limit for every rank (its slowest step is the run's): a stopped rank and the ranks waiting
    # for it go quiet together, and the one that stopped beating is the one to name.
    limit = max([after_s] + [3 * b.slowest_step_s for b in current])
    stuck = []
    for beat in current:
        idle = now - (beat.progress_at if beat.progress_at is not None else now)
        silent = now - beat.beat_at
        beating = silent < 1.5 * HEARTBEAT_S
        # A beating rank is watched from its first step (a first step may compile for minutes); a
        # silent one (stopped, killed, its node lost) whenever it stopped.
        if idle >= limit and (beat.stepped or not beating):
            stuck.append(StalledRank(beat, idle_s=round(idle, 1), silent_s=round(silent, 1), beating=beating))
        elif first_step_s is not None and idle >= max(limit, first_step_s) and beating and not beat.stepped:
            # e.g. a DataLoader worker that never started (a fork that deadlocked): it beats, it waits
            stuck.append(StalledRank(beat, idle_s=round(idle, 1), silent_s=round(silent, 1), beating=True,
                                     before_first_step=True))
    if not stuck:
        return None
    return sorted(stuck, key=lambda s: (s.beating, -s.idle_s, s.beat.rank))[0]


def find_lost_node(beats: Sequence[Heartbeat], now: float, since: float,
                   read_errors: Callable[[], Sequence[RankError]]) -> StalledRank | None:
    """A node lost under the attempt, without waiting for the stall timeout: a rank already died
    of a lost peer (its error an echo: gloo's "Connection closed by peer"), and every rank of
    another node went silent without a word (no error of theirs). srun would wait for that node's
    step daemon, which never answers; the stall timeout would make the run wait minutes more.
    Names the node's lowest rank. The rank errors are read (`read_errors`) only when a whole node
    is silent: the watcher looks every second, and errors/ holds a file a rank."""
    nodes: dict[str, list[Heartbeat]] = {}
    for beat in beats:
        if beat.beat_at >= since and not beat.done:
            nodes.setdefault(beat.host, []).append(beat)
    silent = [ranks for _host, ranks in sorted(nodes.items(), key=lambda kv: min(b.rank for b in kv[1]))
              if all(now - b.beat_at >= 1.5 * HEARTBEAT_S for b in ranks)]
    if not silent:
        return None
    errors = read_errors()
    if not any(ECHO.search(e.text) for e in errors):
        return None
    spoke = {e.rank for e in errors}
    for ranks in silent:
        if all(b.rank not in spoke for b in ranks):
            first = min(ranks, key=lambda b: b.rank)
            idle = now - (first.progress_at if first.progress_at is not None else first.beat_at)
            return StalledRank(first, idle_s=round(idle, 1), silent_s=round(now - first.beat_at, 1), beating=False,
                               node_silent=True)
    return None


def describe_stall(found: StalledRank) -> str:
    if found.node_silent:
        return (f"rank {found.beat.rank} ({found.beat.host}) and every rank of its node silent for "
                f"{found.silent_s:.0f} s, since step {found.beat.step}, while another rank died of a lost peer: "
                "a lost node")
    heard = "still beating (waiting)" if found.beating else f"no heartbeat for {found.silent_s:.0f} s"
    first = " (before its first step)" if found.before_first_step else ""
    return (f"rank {found.beat.rank} ({found.beat.host}) no progress for {found.idle_s:.0f} s{first}, "
            f"since step {found.beat.step}; {heard}")


def record_stall(run: RunDir, found: StalledRank, timeout_s: int, first_step_s: int | None = None) -> str:
    """Record the `stalled` event (the cause the attempt's end then names) and say what stalled."""
    extra = {"before_first_step": True} if found.before_first_step else {"node_silent": True} if found.node_silent else {}
    run.add_event(Event.STALLED, rank=found.beat.rank, host=found.beat.host, idle_s=found.idle_s,
                  step=found.beat.step, timeout_s=first_step_s if found.before_first_step else timeout_s, **extra)
    return f"stalled: {describe_stall(found)}: stopping the ranks"
