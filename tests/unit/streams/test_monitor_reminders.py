"""Before "measurement missed", the kit is reminded once: the reminder when the window is judged,
the episode only if the reading is still missing a reminder grace later (Engine.reminder_grace_s)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import msgspec

from contracts import CommandKind, EpisodeChange, ExpectedMeasurement, Metric, ScheduleWindow, reminder_id
from streams.monitor.engine import Engine, PatientRecord, decode_patient, encode
from tests.unit.streams.test_monitor_rules import PATIENT, T0, Condition, Patient, plan

GRACE = timedelta(hours=1)
WINDOW_END = T0 + timedelta(days=1, hours=1)  # 09:00 UTC the next day
JUDGED = WINDOW_END + timedelta(minutes=30)  # the missed grace (30 min) after the window ends


def _patient() -> tuple[Patient, list]:
    care = plan(
        Condition.HEART_FAILURE,
        timezone="UTC",
        expected=[
            ExpectedMeasurement(
                metric=Metric.BODY_WEIGHT, windows=[ScheduleWindow(start="07:00", end="09:00")]
            )
        ],
    )
    p = Patient(care)
    p.engine = dataclasses.replace(Engine(), reminder_grace_s=GRACE.total_seconds())
    p.feed(Metric.BODY_WEIGHT, 80.0, T0)  # 08:00, inside the window
    p.feed(Metric.PULSE, 70.0, T0 + timedelta(hours=22))  # next day 06:00: the kit is alive
    sent: list = []
    return p, sent


def _tick(p: Patient, sent: list, clock: datetime) -> list:
    patient = p.patient
    out, _ = p.engine.deadline(PATIENT, patient, p.records, p.plan, clock=clock.timestamp(), now=clock)
    p.stored = encode(patient)
    sent += out.commands
    return out.events


def test_the_kit_is_reminded_before_the_episode_opens() -> None:
    """At the judging time a reminder, no episode; the episode at judging + grace, not a second earlier."""
    p, sent = _patient()
    assert _tick(p, sent, JUDGED - timedelta(seconds=1)) == []
    assert sent == []
    assert _tick(p, sent, JUDGED) == []
    (reminder,) = sent
    assert (reminder.kind, reminder.metric, reminder.origin) == (
        CommandKind.REMINDER,
        "body_weight",
        "monitor",
    )
    assert reminder.command_id == reminder_id(patient_id=PATIENT, metric="body_weight", due=WINDOW_END)
    assert reminder.expires_at - reminder.sent_at == GRACE
    assert _tick(p, sent, JUDGED + GRACE - timedelta(seconds=1)) == []
    events = _tick(p, sent, JUDGED + GRACE)
    assert [(e.rule_id, e.change) for e in events] == [("measurement-missed", EpisodeChange.OPENED)]
    assert len(sent) == 1  # reminded once


def test_a_reading_after_the_reminder_keeps_the_episode_from_opening() -> None:
    """The patient measures after the reminder: no episode at all."""
    p, sent = _patient()
    _tick(p, sent, JUDGED)
    assert len(sent) == 1
    p.feed(Metric.BODY_WEIGHT, 80.2, JUDGED + timedelta(minutes=10))
    assert _tick(p, sent, JUDGED + GRACE + timedelta(minutes=1)) == []
    assert len(sent) == 1


def test_a_restarted_monitor_sends_the_same_reminder_again_not_a_new_one() -> None:
    """The stored record names the reminder still in its grace; sent again it is the same record."""
    p, sent = _patient()
    _tick(p, sent, JUDGED)
    (first,) = sent
    restored = decode_patient(p.stored)
    assert p.engine.reminders_due(PATIENT, restored) == [first]
    _tick(p, sent, JUDGED + timedelta(minutes=5))
    assert sent == [first]  # no second reminder for the same window


def test_without_a_grace_nothing_is_reminded_and_the_episode_opens_as_before() -> None:
    """reminder_grace_s = 0 keeps the old behaviour."""
    p, sent = _patient()
    p.engine = Engine()
    events = _tick(p, sent, JUDGED)
    assert [e.rule_id for e in events] == ["measurement-missed"]
    assert sent == []


def test_an_old_patient_record_without_the_reminder_fields_still_decodes() -> None:
    """Records written before reminders existed decode with none pending."""
    old = msgspec.msgpack.encode([0, 5.0, 4.0, {}, [], {}, None])
    record = decode_patient(old)
    assert (record.reminded_checked, record.reminders) == (0.0, [])
    assert isinstance(record, PatientRecord)
