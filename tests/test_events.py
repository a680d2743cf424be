"""The typed events (launcher/events.py): what `add_event` writes reads back field by field, an
older or newer line still reads, and the readers that took raw dicts give the same answers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from launcher import events, records
from launcher.events import Event, EventRecord, Preempted, Requeued, Stalled, Submitted, Trained, parse, unknown_keys
from launcher.lifecycle import last_event, names, this_attempt
from launcher.rundir import RunDir


def test_what_a_writer_appends_reads_back_as_its_class(tmp_path: Path) -> None:
    run = RunDir.create(tmp_path, "job")
    run.add_event(Event.SUBMITTED, backend="local", profile="local", world_size=4,
                  after=[{"run_dir": "/runs/a/1", "run_id": "1", "when": "any"}])
    run.add_event(Event.STARTED, backend="local", pid=12, host="n1", attempt=0)
    run.add_event(Event.PREEMPTED, **records.Preemption(step=7, epoch=1, batch_in_epoch=3, signal="USR1",
                                                       signal_at=10.0, save_s=0.25).to_json())
    run.add_event(Event.REQUEUED, after_step=7, signal_to_exit_s=2.5)
    run.add_event(Event.STALLED, rank=2, host="n3", idle_s=61.0, step=9, timeout_s=60)
    run.add_event(Event.TRAINED, global_step=12, epoch=2, interrupted=False, metrics={"val_acc": 0.5})
    history = run.history()
    assert [type(e) for e in history] == [Submitted, events.Started, Preempted, Requeued, Stalled, Trained]
    assert all(not unknown_keys(raw) for raw in run.read_events())
    submitted = history[0]
    assert isinstance(submitted, Submitted) and submitted.world_size == 4
    assert submitted.dependencies == [events.Dependency(run_dir="/runs/a/1", run_id="1", when="any")]
    preempted = last_event(history, Preempted)
    assert preempted is not None and (preempted.step, preempted.batch_in_epoch, preempted.save_s) == (7, 3, 0.25)
    assert last_event(history, Stalled).host == "n3" and last_event(history, Trained).metrics == {"val_acc": 0.5}
    assert all(e.at is not None and abs(e.at - json.loads(line)["t"]) < 1e-9
               for e, line in zip(history, run.events.read_text().splitlines(), strict=True))
    assert names(this_attempt(history)) == ["preempted", "requeued", "stalled", "trained"]
    assert names(this_attempt(run.read_events())) == names(this_attempt(history))  # raw dicts still read


def test_older_and_newer_lines_read() -> None:
    # no `t` (the oldest runs): the ISO time; a key launch does not know: ignored; an unknown event: the base class
    old = parse({"event": "preempted", "time": "2026-01-02T03:04:05+00:00", "step": 3, "from_the_future": 1})
    assert isinstance(old, Preempted) and old.step == 3 and old.at == 1767323045.0
    assert unknown_keys({"event": "preempted", "step": 3, "from_the_future": 1}) == {"from_the_future"}
    other = parse({"event": "something_new", "t": 5.0, "slurm_job_id": "42"})
    assert type(other) is EventRecord and (other.event, other.at, other.slurm_job_id) == ("something_new", 5.0, "42")
    assert parse({"event": "trained"}) == Trained(event="trained")  # every field has its default
    assert parse(other) is other


def test_the_preempted_event_holds_every_field_of_the_preemption_record() -> None:
    written = {f.name for f in dataclasses.fields(records.Preemption)}
    assert written <= {f.name for f in dataclasses.fields(Preempted)}


def test_every_event_has_its_class() -> None:
    assert set(events.PAYLOADS) == set(Event)
    assert all(events.PAYLOADS[e]().event == "" for e in Event)  # constructible with defaults alone
