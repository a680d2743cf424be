"""The time ledger (launcher/ledger.py) on synthetic events.jsonl histories: the phases add up to
the wall time, saves and recomputed steps are taken out of training, goodput over allocated time."""

from __future__ import annotations

import pytest

from launcher.ledger import PHASES, ledger


def history(*items: tuple[float, str, dict]) -> list[dict]:
    return [{"event": name, "t": t, **fields} for t, name, fields in items]


PREEMPTED_THEN_KILLED = history(
    (0.0, "submitted", {}), (2.0, "queued", {}),
    (10.0, "started", {}), (25.0, "training_started", {}), (30.0, "first_step", {"global_step": 1}),
    (130.0, "preempted", {"step": 100, "save_s": 4.0}), (136.0, "requeued", {}),
    (166.0, "started", {}), (176.0, "resumed", {"global_step": 100}), (180.0, "first_step", {"global_step": 101}),
    (260.0, "restarted", {"step_reached": 180}),  # died at step 180; its last checkpoint was at step 160
    (262.0, "started", {}), (270.0, "resumed", {"global_step": 160}), (273.0, "first_step", {"global_step": 161}),
    (333.0, "trained", {"global_step": 220}), (340.0, "finished", {"global_step": 220}),
)


def test_the_phases_add_up_to_the_wall_time_and_say_where_it_went() -> None:
    book = ledger(PREEMPTED_THEN_KILLED, now=10_000.0)  # ended: `now` does not count
    assert book is not None and book.wall_s == 340.0
    assert sum(book.phases.values()) == pytest.approx(book.wall_s)
    assert book.phases["queue"] == 10.0 and book.phases["requeue"] == 30.0 + 2.0
    assert book.phases["start-up"] == 20.0 + 14.0 + 11.0
    assert book.phases["checkpoints"] == 4.0 and book.phases["stopping"] == 6.0 and book.phases["finishing"] == 7.0
    assert book.phases["training"] == 100.0 - 4.0 + 80.0 + 60.0
    # 20 steps trained twice, at the run's mean step time (236 s of training over 220 + 20 steps)
    assert book.recomputed_steps == 20 and book.recomputed_s == pytest.approx(20 * 236.0 / 240)
    assert book.allocated_s == 340.0 - 10.0 - 32.0
    assert book.goodput == round((236.0 - book.recomputed_s) / 298.0, 3)
    assert book.line().startswith("wall 340 s: queue 10 s, requeue 32 s, start-up 45 s, training 236 s")
    assert set(book.as_dict()) >= {f"{p}_s" for p in PHASES} | {"goodput", "recomputed_steps", "allocated_s"}


def test_a_run_still_going_counts_to_now_and_a_wait_for_resume_is_not_allocated() -> None:
    running = history((0.0, "submitted", {}), (1.0, "started", {}), (5.0, "first_step", {"global_step": 1}))
    book = ledger(running, now=65.0)
    assert book is not None and book.wall_s == 65.0 and book.phases["training"] == 60.0
    failed_then_resumed = history(
        (0.0, "submitted", {}), (1.0, "started", {}), (3.0, "first_step", {"global_step": 1}),
        (13.0, "failed", {"step_reached": 50}), (613.0, "resume_requested", {}), (614.0, "started", {}),
        (616.0, "resumed", {"global_step": 40}), (617.0, "first_step", {"global_step": 41}),
        (627.0, "trained", {"global_step": 90}), (628.0, "finished", {}))
    book = ledger(failed_then_resumed, now=0.0)
    assert book is not None and book.phases["stopped"] == 600.0 and book.phases["requeue"] == 1.0
    assert book.allocated_s == 628.0 - 1.0 - 1.0 - 600.0 and book.recomputed_steps == 10
    assert ledger([{"event": "started", "t": 1.0}], now=2.0) is None  # not a submitted run


def test_an_attempt_that_died_unrecorded_is_not_counted_as_training() -> None:
    """Every process SIGKILLed (no `failed` record), `launch resume` 100 s later."""
    book = ledger(history((0.0, "submitted", {}), (1.0, "started", {}), (3.0, "first_step", {"global_step": 1}),
                          (8.0, "preempted", {"step": 20, "save_s": 1.0}), (9.0, "requeued", {}),
                          (10.0, "started", {}), (12.0, "first_step", {"global_step": 21}),
                          (112.0, "resume_requested", {}), (113.0, "started", {}), (115.0, "first_step", {}),
                          (125.0, "trained", {"global_step": 80}), (126.0, "finished", {})), now=0.0)
    assert book is not None and book.phases["unrecorded"] == 100.0 and book.phases["training"] == 4.0 + 10.0
    assert book.wall_s == 126.0 and sum(book.phases.values()) == pytest.approx(126.0)
