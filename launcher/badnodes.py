"""Bad-node memory: the nodes a run found broken (lost under it, failed a pre-flight check), from
its events. Every later SLURM job of the run (a replacement job, `launch resume`) excludes them
(`sbatch --exclude`), unless SLURM refuses for want of nodes; `launch status` lists them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from launcher.events import BadNode, Cancelled, Event, EventRecord, Requeued, typed
from launcher.rundir import RunDir


def bad_nodes(events: Sequence[Mapping[str, Any] | EventRecord]) -> dict[str, str]:
    """node -> why, in the order the run found them (the first reason of each)."""
    found: dict[str, str] = {}
    for e in typed(events):
        if isinstance(e, BadNode) and e.host:
            found.setdefault(e.host, e.reason)
        elif isinstance(e, Requeued):  # run directories from before bad_node events
            for node in e.lost_nodes:
                found.setdefault(node, "lost")
        elif isinstance(e, Cancelled):  # cancelled while SLURM waited for a node that does not answer
            for node in e.completing_on_lost_nodes:
                found.setdefault(node, "lost (did not answer when the run was cancelled)")
    return found


def record_bad_nodes(run: RunDir, nodes: Mapping[str, str]) -> None:
    known = bad_nodes(run.history())
    for node, reason in nodes.items():
        if node not in known:
            run.add_event(Event.BAD_NODE, host=node, reason=reason)


def describe(nodes: Mapping[str, str]) -> str:
    return ", ".join(f"{node} ({reason})" for node, reason in nodes.items())
