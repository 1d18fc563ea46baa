"""The real monitor reminds the kit before "measurement missed": the reminder on the commands topic
first, the episode only when the reading is still missing a reminder grace later."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec

from contracts import CarePlan, Condition, ExpectedMeasurement, Metric, ScheduleWindow, reminder_id, topics
from tests.conftest import Stack
from tests.integration.monitor_support import MonitorProcess
from tests.integration.stage_support import consume, produce
from tests.support.records import make_measurement

T0 = datetime(2026, 11, 10, 8, 0, tzinfo=UTC)  # inside the 07:00-09:00 UTC weight window
PATIENT = "REMIND-P"


def _plan() -> tuple[str, bytes]:
    plan = CarePlan(
        patient_id=PATIENT, version=1, condition=Condition.HEART_FAILURE, team_id="t", changed_at=T0,
        changed_by="test", timezone="UTC",
        expected=[ExpectedMeasurement(
            metric=Metric.BODY_WEIGHT, windows=[ScheduleWindow(start="07:00", end="09:00")]
        )],
    )  # fmt: skip
    return PATIENT, msgspec.json.encode(plan)


def _reading(metric: Metric, value: float, at: datetime) -> tuple[str, bytes]:
    key, payload, *_ = make_measurement(patient=PATIENT, kit="RK-1", metric=metric, reported=value, at=at)
    return key, payload


def test_the_kit_is_reminded_before_the_missed_episode_opens(stack: Stack, monitor: MonitorProcess) -> None:
    """Day 2's weight never comes: a reminder (deterministic id, in the patient's language) once the
    window is judged, and the info episode only after the grace; the reminder's record is older than
    the episode's."""
    prefix = monitor.prefix
    produce(stack, topics.careplan_topic(prefix), [_plan()])
    monitor.extra_env["VAKTROM_MONITOR_REMINDER_GRACE_MIN"] = "60"
    monitor.start()
    day2 = T0 + timedelta(days=1)
    window_end = day2.replace(hour=9)
    readings = [
        _reading(Metric.BODY_WEIGHT, 80.0, T0),
        _reading(Metric.PULSE, 70.0, day2.replace(hour=6)),  # the kit is alive on day 2
        _reading(Metric.PULSE, 71.0, window_end + timedelta(minutes=45)),  # past judging: a reminder
    ]
    produce(stack, topics.measurement_topic(prefix), readings)
    (reminder,) = [v for _k, v, _h in consume(stack, topics.kit_command_topic(prefix), until=1, timeout=60)]
    assert reminder["command_id"] == reminder_id(patient_id=PATIENT, metric="body_weight", due=window_end)
    assert (reminder["kind"], reminder["metric"], reminder["origin"]) == (
        "reminder",
        "body_weight",
        "monitor",
    )
    assert reminder["text"] == "Husk å veie deg nå og sende målingen."  # a plan without a language: bokmål
    assert [v for _k, v, _h in consume(stack, topics.alert_topic(prefix), timeout=5, idle=3)] == []
    produce(
        stack,
        topics.measurement_topic(prefix),
        [_reading(Metric.PULSE, 72.0, window_end + timedelta(hours=2))],
    )
    events = monitor.wait_events(stack, 1)
    assert [e["rule_id"] for e in events] == ["measurement-missed"]
    commands = consume(stack, topics.kit_command_topic(prefix), timeout=5, idle=3)
    assert {v["command_id"] for _k, v, _h in commands} == {reminder["command_id"]}  # reminded once
    assert monitor.stop() == 0
