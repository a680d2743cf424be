"""`checkpoint.every_n_minutes = "auto"`: the periodic checkpoint's interval from the failure rate.

With a save that blocks training C seconds and failures every M seconds on average, a checkpoint
every T seconds loses C/T of the time to saving and, at each failure, T/2 of training on average
(the steps since the newest checkpoint, trained again): C/T + T/(2M) a second, least at Young's
T = sqrt(2CM); Daly's refinement subtracts C. M is the run's: a node's mean time between failures
(the cluster profile's `node_mtbf_hours`) over the run's node count. The interval is kept within
[MIN_S, MAX_S]; until one of the run's own saves has been timed it is FIRST_S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_S = 60.0  # below a minute the save's own I/O and the agreement's clock dominate
MAX_S = 3600.0  # a crash never costs more than half an hour of training
FIRST_S = 600.0  # before the run has timed a save of its own
CHANGE = 0.2  # a new interval is announced (and recorded) when it moves by more than this fraction


def young_daly_s(save_s: float, mtbf_s: float) -> float:
    """The interval that loses least to saving and to recomputation: sqrt(2 C M) - C (C << M)."""
    if save_s <= 0:
        return 0.0
    return max(0.0, math.sqrt(2.0 * save_s * mtbf_s) - save_s)


def expected_loss(every_s: float, save_s: float, mtbf_s: float) -> float:
    """The fraction of training time lost to saves and to recomputing after failures."""
    return save_s / every_s + every_s / (2.0 * mtbf_s)


@dataclass(frozen=True)
class AutoInterval:
    """The run's failure rate: a node's MTBF (hours) and the run's node count."""

    node_mtbf_h: float
    nodes: int

    @property
    def mtbf_s(self) -> float:
        return self.node_mtbf_h * 3600.0 / max(1, self.nodes)

    def seconds(self, save_s: float | None) -> float:
        """The interval for saves that block `save_s` seconds (None: none timed yet)."""
        if save_s is None:
            return FIRST_S
        return min(MAX_S, max(MIN_S, young_daly_s(save_s, self.mtbf_s)))

    def why(self, save_s: float | None) -> str:
        every = self.seconds(save_s)
        if save_s is None:
            return f"every {every / 60:.1f} min until a save has been timed"
        bound = " (the bound)" if every in (MIN_S, MAX_S) else ""
        return (f"every {every / 60:.1f} min{bound}: a save blocks training {save_s:.3f} s and a run of "
                f"{self.nodes} node(s) fails every {self.mtbf_s / 3600:.3g} h on average "
                f"(cluster.node_mtbf_hours = {self.node_mtbf_h:g} / {self.nodes}); Young/Daly: sqrt(2 x save x MTBF)")
