"""Before "measurement missed", the kit is reminded once: the reminder when the window is judged,
the episode only if the reading is still missing a reminder grace later (Engine.reminder_grace_s)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import msgspec
import pytest

from contracts import CommandKind, EpisodeChange, ExpectedMeasurement, Metric, ScheduleWindow, reminder_id
from streams.monitor.batch import KIT, PLAN, Names, Processor
from streams.monitor.engine import Engine, PatientRecord, decode_patient, encode
from streams.monitor.metrics import MonitorMetrics
from streams.monitor.store import MemoryStore
from tests.unit.streams.test_monitor_agent import NAMES
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


def _in(p: Patient, language: str) -> Patient:
    p.plan = msgspec.structs.replace(p.plan, language=language)
    return p


def test_the_reminder_is_in_the_plans_language() -> None:
    """The patient's language, from the care plan: bokmål for nb (the default), English for en; the
    same command id either way, so a repeat in another language is still one reminder."""
    texts = {}
    for language in ("nb", "en"):
        p, sent = _patient()
        _tick(_in(p, language), sent, JUDGED)
        (reminder,) = sent
        texts[language] = (reminder.text, reminder.command_id)
    assert texts["nb"][0] == "Husk å veie deg nå og sende målingen."
    assert texts["en"][0] == "Reminder: please weigh yourself now and send the measurement."
    assert texts["nb"][1] == texts["en"][1]
    p, sent = _patient()
    assert p.plan.language == "nb"  # a plan that never chose one
    _tick(p, sent, JUDGED)
    assert sent[0].text == texts["nb"][0]


def test_a_reminder_sent_again_after_a_restart_is_in_the_plans_language() -> None:
    """`reminders_due` (a partition loaded again) says the reminder in the language it is given."""
    p, sent = _patient()
    _tick(_in(p, "en"), sent, JUDGED)
    restored = decode_patient(p.stored)
    (again,) = p.engine.reminders_due(PATIENT, restored, language="en")
    assert again == sent[0]
    (nb,) = p.engine.reminders_due(PATIENT, restored)
    assert nb.text == "Husk å veie deg nå og sende målingen."
    assert nb.command_id == again.command_id


@pytest.mark.parametrize(
    ("language", "text"),
    [
        ("en", "Reminder: please weigh yourself now and send the measurement."),
        ("nb", "Husk å veie deg nå og sende målingen."),
        (None, "Husk å veie deg nå og sende målingen."),  # no plan held: bokmål
    ],
)
def test_a_loaded_partition_sends_its_pending_reminders_in_each_plans_language(
    language: str | None, text: str
) -> None:
    """The monitor's shell, loading a partition, finds the patient's plan in its store and says the
    reminders still in their grace in that plan's language."""
    p, sent = _patient()
    if language is not None:
        _in(p, language)
    _tick(p, sent, JUDGED)
    store = MemoryStore()
    held = {PATIENT.encode() + KIT: p.stored}
    if language is not None:
        held[PATIENT.encode() + PLAN] = msgspec.json.encode(p.plan)
    store.write({0: held}, {0: 1})
    processor = Processor(
        engine=p.engine, names=Names(NAMES["measurements"], NAMES["status"], NAMES["careplans"]),
        store=store, metrics=MonitorMetrics(),
    )  # fmt: skip
    processor.load({0})
    ((key, command),) = processor.take().commands
    assert (key, command.text, command.command_id) == (PATIENT.encode(), text, sent[0].command_id)
