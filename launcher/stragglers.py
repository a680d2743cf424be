"""Stragglers: a rank whose own compute per training step is slower than the others', found from
the heartbeats (every rank's `compute_s`: the median, over its last steps, of the time from the
end of its previous step to its backward's last gradient, which leaves out what it waits for
others in DDP's gradient all-reduce). In DDP every rank waits for the slowest one at every step,
so a straggler slows the whole run; its step time alone does not show which rank it is.

The local supervisor and the SLURM batch script's watcher record a `straggler` event the first
time an attempt's rank is seen straggling; `launch status` names the ranks straggling now.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from launcher.badnodes import record_bad_nodes
from launcher.events import Event, Straggler
from launcher.records import Heartbeat, StragglingRank
from launcher.rundir import RunDir

MIN_GAP_S = 0.005  # below this a difference is timer and scheduler noise, whatever the ratio


def find_stragglers(beats: Sequence[Heartbeat], since: float, factor: float) -> list[StragglingRank]:
    """The ranks of the attempt started at `since` whose step compute is above `factor` times the
    median of the other ranks' (and at least MIN_GAP_S above it), slowest first. Needs two ranks
    that measured one; `factor` 0 turns it off."""
    measured = sorted((b for b in beats if b.beat_at >= since and not b.done and b.compute_s is not None),
                      key=lambda b: b.compute_s)  # type: ignore[arg-type, return-value]
    if factor <= 0 or len(measured) < 2:
        return []
    values = [float(b.compute_s) for b in measured]  # type: ignore[arg-type]
    found = []
    for i, beat in enumerate(measured):
        others = median_without(values, i)
        if values[i] > factor * others and values[i] - others >= MIN_GAP_S:
            found.append(StragglingRank(beat, factor=round(values[i] / others, 2) if others > 0 else float("inf"),
                                        median_s=others))
    return sorted(found, key=lambda s: (-s.factor, s.beat.rank))


def median_without(ordered: Sequence[float], i: int) -> float:
    """The median of the sorted `ordered` without its i-th value, in O(1): the watcher compares
    every rank with the others at every look (8,192 ranks: 33 ms, where a median a rank took 4 s)."""
    n = len(ordered) - 1
    at = lambda j: ordered[j if j < i else j + 1]  # noqa: E731 - the j-th of the others
    return at(n // 2) if n % 2 else (at(n // 2 - 1) + at(n // 2)) / 2


def describe(rank: int | None, host: str, factor: float, compute_s: float | None, median_s: float | None) -> str:
    """How a straggler is named, on the console, in status and in the ui (now or from its event)."""
    return (f"rank {rank} ({host}): {factor:g}x the median step compute of the other ranks "
            f"({compute_s or 0.0:.3f} s vs {median_s or 0.0:.3f} s)")


def describe_straggler(found: StragglingRank) -> str:
    return describe(found.beat.rank, found.beat.host, found.factor, found.beat.compute_s, found.median_s)


def record_stragglers(run: RunDir, found: Iterable[StragglingRank], seen: set[int], exclude_factor: float = 0.0,
                      excluded: set[str] | None = None) -> list[str]:
    """Record a `straggler` event for each rank not in `seen` (this attempt's, updated), and a
    `bad_node` for a node whose straggler is `exclude_factor` (job.straggler_exclude_factor) or
    more times slower (not in `excluded`, updated); say so."""
    said = []
    for s in found:
        if s.beat.rank not in seen:
            seen.add(s.beat.rank)
            run.add_event(Event.STRAGGLER, rank=s.beat.rank, host=s.beat.host, step=s.beat.step, factor=s.factor,
                          compute_s=s.beat.compute_s, median_s=round(s.median_s, 4))
            said.append(f"straggler: {describe_straggler(s)}")
        if exclude_factor and s.factor >= exclude_factor and excluded is not None and s.beat.host not in excluded:
            excluded.add(s.beat.host)
            record_bad_nodes(run, {s.beat.host: f"straggler: rank {s.beat.rank} at {s.factor:g}x the others' step compute "
                                                f"(job.straggler_exclude_factor = {exclude_factor:g})"})
            said.append(f"bad node {s.beat.host}: its rank {s.beat.rank} computes {s.factor:g}x slower than the others; "
                        "later SLURM jobs of this run exclude it")
    return said


def describe_event(e: Straggler) -> str:
    return f"{describe(e.rank, e.host, e.factor, e.compute_s, e.median_s)}, first seen at step {e.step}"
