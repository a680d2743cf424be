"""checkpoint.every_n_minutes = "auto" (launcher/checkpoint_interval.py): Young/Daly's interval on
fixed inputs, the bounds, and how rank zero's handler follows its timed saves. Pure and fast."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from launcher.checkpoint_interval import FIRST_S, MAX_S, MIN_S, AutoInterval, expected_loss, young_daly_s
from launcher.events import parse
from launcher.report import checkpoint_interval


def test_the_interval_is_young_daly_on_the_runs_own_failure_rate() -> None:
    assert young_daly_s(2.0, 28_440.0) == pytest.approx(math.sqrt(113_760.0) - 2.0)  # 335.28 s
    meta = AutoInterval(node_mtbf_h=1000.0, nodes=128)  # 128 nodes x 8 GPUs: a failure every 7.8 h
    assert meta.mtbf_s == pytest.approx(28_125.0)
    assert meta.seconds(2.0) == pytest.approx(math.sqrt(2 * 2.0 * 28_125.0) - 2.0)  # 333.4 s: 5.6 min, not 30
    assert AutoInterval(1000.0, 1).seconds(0.05) == pytest.approx(600.0 - 0.05)
    # it is the least loss: saving more often or less often both lose more
    best = meta.seconds(2.0)
    for other in (0.5 * best, 0.9 * best, 1.1 * best, 2 * best, 1800.0):
        assert expected_loss(best, 2.0, meta.mtbf_s) < expected_loss(other, 2.0, meta.mtbf_s)
    assert expected_loss(1800.0, 2.0, meta.mtbf_s) > 2.5 * expected_loss(best, 2.0, meta.mtbf_s)


def test_the_interval_is_bounded_and_waits_for_a_timed_save() -> None:
    one = AutoInterval(1000.0, 1)
    assert one.seconds(None) == FIRST_S == 600.0
    assert one.seconds(0.0001) == MIN_S and one.seconds(100.0) == MAX_S
    assert "(the bound)" in one.why(100.0) and "until a save has been timed" in one.why(None)
    why = AutoInterval(1000.0, 128).why(2.0)
    assert why.startswith("every 5.6 min: a save blocks training 2.000 s and a run of 128 node(s) fails every 7.81 h")
    assert "cluster.node_mtbf_hours = 1000 / 128" in why


def test_rank_zero_follows_its_saves_and_announces_only_real_moves() -> None:
    from launcher.runtime.preemption import PreemptionHandler

    said: list[tuple[float, float, str]] = []
    handler = PreemptionHandler([], "preempt.ckpt", None, None, periodic_path="resume.ckpt",
                                auto=AutoInterval(1000.0, 1), on_interval=lambda *a: said.append(a))
    assert handler.every_n_s == FIRST_S and not said
    handler._timed_save(0.05)
    assert handler.every_n_s == pytest.approx(599.95) and len(said) == 1 and said[0][1] == 0.05
    handler._timed_save(0.052)  # 2 % longer: followed, not announced
    assert handler.every_n_s == pytest.approx(math.sqrt(2 * 0.052 * 3.6e6) - 0.052) and len(said) == 1
    handler._timed_save(0.5)  # a save ten times longer: up at once, announced
    assert len(said) == 2 and said[1][0] == pytest.approx(math.sqrt(2 * 0.5 * 3.6e6) - 0.5)
    handler._timed_save(0.01)  # one fast save: down slowly (0.8 of the last), not to 0.01 at once
    assert handler._save_s == pytest.approx(0.4)
    fixed = PreemptionHandler([], "preempt.ckpt", None, None, periodic_path="resume.ckpt", every_n_minutes=30.0)
    assert fixed.every_n_s == 1800.0 and fixed.auto is None


def test_status_says_the_interval_and_why() -> None:
    def cfg(minutes: float | str, steps: int | None = None) -> SimpleNamespace:
        return SimpleNamespace(checkpoint=SimpleNamespace(every_n_minutes=minutes, every_n_train_steps=steps))

    assert checkpoint_interval(cfg(30.0), []) == "every 30 min (checkpoint.every_n_minutes)"
    assert checkpoint_interval(cfg(0.0, 5), []) == "every 5 steps; not by time (checkpoint.every_n_minutes = 0)"
    assert checkpoint_interval(cfg("auto"), []) == "auto, every 10 min until a save has been timed"
    chosen = parse({"event": "checkpoint_interval", "every_s": 333.4, "save_s": 2.0, "why": "every 5.6 min: ..."})
    assert checkpoint_interval(cfg("auto", 5), [chosen]) == "every 5 steps; auto, every 5.6 min: ..."
