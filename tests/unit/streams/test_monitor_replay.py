"""The what-if replay: one patient's stored history through the pure core under a given plan."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from contracts import (
    METRICS,
    AnsweredItem,
    CarePlan,
    Condition,
    ExpectedMeasurement,
    Measurement,
    Metric,
    QuestionnaireAnswer,
    ScheduleWindow,
    answer_id,
    measurement_id,
)
from streams.monitor.replay import replay

T0 = datetime(2026, 11, 2, 7, 30, tzinfo=UTC)
P = "PAT-WHATIF1"
UNTIL = T0 + timedelta(days=10)


def _glucose(at: datetime, value: float) -> Measurement:
    spec = METRICS[Metric.GLUCOSE]
    mid = measurement_id(
        device_id="D1", patient_id=P, metric="glucose", reported_value=value, reported_unit=spec.unit,
        flag=None, measured_at=at,
    )  # fmt: skip
    return Measurement(
        measurement_id=mid, patient_id=P, kit_id="K1", device_id="D1", metric=Metric.GLUCOSE,
        loinc=spec.loinc, value=value, unit=spec.unit, reported_value=value, reported_unit=spec.unit,
        measured_at=at, received_at=at,
    )  # fmt: skip


def _plan(**changes: object) -> CarePlan:
    fields: dict[str, object] = {
        "patient_id": P,
        "version": 1,
        "condition": Condition.DIABETES,
        "team_id": "T1",
        "timezone": "UTC",
        "expected": [
            ExpectedMeasurement(metric=Metric.GLUCOSE, windows=[ScheduleWindow(start="07:00", end="09:00")])
        ],
        "changed_at": T0,
        "changed_by": "test",
    }
    return CarePlan(**(fields | changes))  # type: ignore[arg-type]


def _days(low: float = 6.5) -> list[Measurement]:
    """A reading a day at 07:30 UTC for ten days; day 5's is `low` mmol/L."""
    return [_glucose(T0 + timedelta(days=d), low if d == 5 else 6.5) for d in range(10)]


def test_a_low_glucose_raises_exactly_gl1_under_the_default_plan() -> None:
    """3.8 mmol/L (< 3.9) raises one GL-1 episode, opened at the reading, with its value; nothing else."""
    result = replay(_days(3.8), [], _plan(), until=UNTIL)
    assert result.inputs == 10
    assert result.by_rule == {"GL-1": 1}
    (raised,) = result.raised
    assert raised.opened_at == T0 + timedelta(days=5)
    assert raised.value == 3.8
    assert raised.severity == "yellow"
    assert raised.nurse_facing


def test_the_boundary_value_raises_nothing() -> None:
    """3.9 mmol/L is not below 3.9: no episode (the rule's own boundary, through the replay)."""
    assert replay(_days(3.9), [], _plan(), until=UNTIL).raised == []


def test_a_plan_with_the_rule_off_or_a_lower_threshold_raises_nothing() -> None:
    """The same history under a plan with GL-1 off, or its threshold at 3.5 mmol/L: no episode."""
    history = _days(3.8)
    assert replay(history, [], _plan(rules_off=["GL-1"]), until=UNTIL).raised == []
    assert replay(history, [], _plan(thresholds={"GL-1": {"mmol": 3.5}}), until=UNTIL).raised == []
    # and a threshold raised above the reading still raises it
    assert replay(history, [], _plan(thresholds={"GL-1": {"mmol": 4.2}}), until=UNTIL).by_rule == {"GL-1": 1}


def test_an_empty_history_raises_nothing() -> None:
    """No readings, no answers: nothing replayed, nothing raised (no kit was heard, so none is silent)."""
    result = replay([], [], _plan(), until=UNTIL)
    assert result.inputs == 0
    assert result.raised == []
    assert replay([], [], None, until=UNTIL).raised == []


def test_the_plan_time_zone_places_the_windows() -> None:
    """Readings at 07:30 UTC meet a 07:00-09:00 window in UTC; in New York (12:00-14:00 UTC) they
    miss it, and the replay raises measurement-missed (info) for that plan only."""
    history = _days()
    assert replay(history, [], _plan(), until=UNTIL).raised == []
    elsewhere = replay(history, [], _plan(timezone="America/New_York"), until=UNTIL)
    assert set(elsewhere.by_rule) == {"measurement-missed"}
    assert all(r.severity == "info" for r in elsewhere.raised)
    assert elsewhere.nurse_facing == 0


def test_inputs_after_until_are_left_out_and_order_does_not_matter() -> None:
    """The replay takes the history in event time whatever order it is given in, up to `until`."""
    history = _days(3.8)
    assert replay(list(reversed(history)), [], _plan(), until=UNTIL).by_rule == {"GL-1": 1}
    early = replay(history, [], _plan(), until=T0 + timedelta(days=4))
    assert early.inputs == 5
    assert early.raised == []


def test_a_contact_request_answer_raises_contact1_unless_switched_off() -> None:
    """An answer goes through the answer rules: a contact request raises CONTACT-1; off in the plan, not."""
    at = T0 + timedelta(days=2, hours=2)
    aid = answer_id(kit_id="K1", patient_id=P, response_id="r1", questionnaire="contact-request", authored=at)
    answer = QuestionnaireAnswer(
        answer_id=aid, patient_id=P, kit_id="K1", questionnaire="contact-request", version="1", authored=at,
        received_at=at,
        items=[AnsweredItem(link_id="topic", code="symptoms")], score=0, worsening=[],
    )  # fmt: skip
    assert replay(_days(), [answer], _plan(), until=UNTIL).by_rule == {"CONTACT-1": 1}
    assert replay(_days(), [answer], _plan(rules_off=["CONTACT-1"]), until=UNTIL).raised == []


def test_replay_is_repeatable() -> None:
    """Two replays of the same history and plan give the same episodes (no wall clock inside)."""
    a = replay(_days(3.8), [], _plan(), until=UNTIL)
    b = replay(_days(3.8), [], _plan(), until=UNTIL)
    assert a.raised == b.raised
