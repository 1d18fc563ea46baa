"""The deadline timer keeps one live entry per patient: the earliest time asked since it last came
up. Before, every record write pushed an entry (a day ahead), and the heap grew without bound in
the soak (`bench/soak.py`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import CarePlan, Condition, ExpectedMeasurement, KitStatusEvent, Metric, ScheduleWindow
from streams.monitor.batch import Names, Processor
from streams.monitor.engine import Engine, decode_patient
from streams.monitor.store import MemoryStore
from streams.monitor.timers import Timer
from tests.unit.streams.test_monitor_agent import NAMES, T0, Harness, reading

_PATIENTS = st.sampled_from([b"a", b"b", b"c"])
_TIMES = st.floats(min_value=0, max_value=100, allow_nan=False)
_STEPS = st.lists(
    st.one_of(st.tuples(st.just("ask"), _PATIENTS, st.none() | _TIMES), st.tuples(st.just("pop"), _TIMES)),
    max_size=60,
)


@settings(max_examples=300)
@given(start=st.dictionaries(_PATIENTS, _TIMES), steps=_STEPS)
def test_the_timer_gives_each_patient_at_the_earliest_time_asked_once(
    start: dict[bytes, float], steps: list[tuple]
) -> None:
    timer, model = Timer(start), dict(start)  # model: patient -> the earliest time asked, not yet given
    for step in steps:
        if step[0] == "ask":
            _, patient, wake = step
            timer.ask(patient, wake)
            if wake is not None:
                model[patient] = min(wake, model.get(patient, wake))
        else:
            now = step[1]
            given_now = []
            while (due := timer.pop(now)) is not None:
                given_now.append(due)
            expected = sorted((wake, p) for p, wake in model.items() if wake <= now)
            assert given_now == expected
            for _, patient in given_now:
                del model[patient]
            assert not timer.due(now)
        assert len(timer) == len(model)
        assert timer.entries <= 2 * len(steps) + len(start)


def test_a_patient_sending_all_day_holds_one_timer_entry() -> None:
    """Every reading moves the "kit silent" deadline on; the timer must not keep each one."""
    harness = Harness()
    for i in range(400):
        at = T0 + timedelta(minutes=3 * i)
        key, raw = reading("P1", Metric.PULSE if i % 2 else Metric.SPO2, 70.0 if i % 2 else 96.0, at)
        harness.put(NAMES["measurements"], key, raw, 0, None)
        if i % 50 == 0:
            harness.put(NAMES["ticks"], None, b"", 0, None)
    timer = harness.processor.timers[0]
    assert len(timer) == 1
    assert timer.entries <= 3


class _SmallCache(Harness):
    """A worker whose cache holds six keys: records leave it between batches, as under load."""

    def _processor(self, store: MemoryStore) -> Processor:
        names = Names(NAMES["measurements"], NAMES["status"], NAMES["careplans"])
        return Processor(engine=Engine(), names=names, store=store, metrics=self.metrics, cached=6)


def _status(patient: str | None, at: datetime) -> tuple[bytes, bytes]:
    event = KitStatusEvent(
        kit_id=f"{patient or 'X'}-K", patient_id=patient, state="heartbeat", at=at, received_at=at
    )
    return (patient or "X").encode(), msgspec.json.encode(event)


_FOUR_TO_FIVE = ScheduleWindow(start="16:00", end="17:00")


def _weight_at_four(patient: str) -> tuple[bytes, bytes]:
    plan = CarePlan(
        patient_id=patient, version=1, condition=Condition.HEART_FAILURE, team_id="t", changed_at=T0,
        changed_by="t", timezone="UTC",
        expected=[ExpectedMeasurement(metric=Metric.BODY_WEIGHT, windows=[_FOUR_TO_FIVE])],
    )  # fmt: skip
    return patient.encode(), msgspec.json.encode(plan)


def test_a_new_care_plan_wakes_the_patient_for_its_first_window() -> None:
    """Found in review: a new plan did not move the deadline, so its first window was judged only
    when the patient next woke. The old heap happened to hold an older, earlier entry; with one
    entry per patient, the next wake was the kit-silent one, and a silent kit is not judged on its
    windows: "measurement missed" never came."""
    h = _SmallCache()
    m, s, c, tick = NAMES["measurements"], NAMES["status"], NAMES["careplans"], NAMES["ticks"]

    def at(hours: float) -> datetime:
        return T0 + timedelta(hours=hours)  # T0 is 07:30 UTC

    h.put(m, *reading("P", Metric.PULSE, 70.0, at(0)), 0, None)
    h.put(s, *_status("P", at(4)), 0, None)
    h.put(m, *reading("P", Metric.PULSE, 70.0, at(8)), 0, None)  # the deadline moves on in memory only
    h.put(c, *_weight_at_four("P"), 0, None)  # weight due 16:00-17:00 UTC, +8.5 h to +9.5 h
    for hours in (10.6, 13.1):
        h.put(s, *_status(None, at(hours)), 0, None)  # another kit's message moves the clock on
        h.put(tick, None, b"", 0, None)
    for q in ("Q1", "Q2", "Q3"):  # the cache lets P's records go
        h.put(m, *reading(q, Metric.PULSE, 70.0, at(13.2)), 0, None)
    missed = [e for e in h.sent if e.patient_id == "P" and e.rule_id == "measurement-missed"]
    assert missed, "the plan's first window passed without a reading and no nurse was told"
    assert missed[0].opened_at <= at(10.6)


def test_a_status_after_a_failed_silence_deadline_does_not_break_the_batch(monkeypatch: Any) -> None:
    """Found in review: the failed deadline made the batch forget the patient's record, the status
    then changed the forgotten copy, and `take` failed with a KeyError: the whole batch, every
    partition's output, lost at each try."""
    h = Harness()
    h.put(NAMES["measurements"], *reading("P", Metric.PULSE, 70.0, T0), 0, None)

    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("a bug in a rule")

    monkeypatch.setattr(Engine, "deadline", broken)
    h.put(NAMES["status"], *_status("P", T0 + timedelta(hours=20)), 0, None)
    record = decode_patient(h.state(b"P|kit"))
    assert record.last_seen == (T0 + timedelta(hours=20)).timestamp()
    assert h.processor.timers[0].due((T0 + timedelta(hours=40)).timestamp())  # tried again later
