"""The monitoring rules at their published boundaries (docs/clinical-rules.md), through the pure engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec
import pytest

from contracts import (
    METRICS,
    CarePlan,
    Condition,
    EpisodeChange,
    ExpectedMeasurement,
    Measurement,
    Metric,
    ScheduleWindow,
    Severity,
    Spo2Scale,
    measurement_id,
    to_canonical,
)
from streams.monitor.engine import Engine, MetricRecord, PatientRecord, decode_metric, decode_patient, encode
from streams.monitor.plan import rule_plan

T0 = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
PATIENT = "P-RULES-1"
OSLO = ZoneInfo("Europe/Oslo")


def _oslo(*parts: int) -> datetime:
    """A wall-clock time in Oslo (the default care-plan and console time zone)."""
    return datetime(*parts, tzinfo=OSLO)  # type: ignore[misc]


def plan(condition: Condition, **kw: object) -> CarePlan:
    return CarePlan(
        patient_id=PATIENT,
        version=1,
        condition=condition,
        team_id="team-a",
        changed_at=T0,
        changed_by="test",
        **kw,  # type: ignore[arg-type]
    )


def reading(
    metric: Metric, value: float | None, at: datetime, unit: str | None = None, flag: str | None = None
) -> Measurement:
    unit = unit or METRICS[metric].unit
    canonical = None if value is None else to_canonical(metric, value, unit)
    mid = measurement_id(
        device_id="D1",
        patient_id=PATIENT,
        metric=metric,
        reported_value=value,
        reported_unit=unit,
        flag=flag,
        measured_at=at,
    )
    return Measurement(
        measurement_id=mid,
        patient_id=PATIENT,
        kit_id="K1",
        device_id="D1",
        metric=metric,
        loinc=METRICS[metric].loinc,
        value=canonical,
        unit=METRICS[metric].unit,
        reported_value=value,
        reported_unit=unit,
        flag=flag,
        measured_at=at,
        received_at=at,
    )


class Patient:
    """One patient's records fed through the engine, as the faust shell does: records are read from
    their stored bytes for every message, and the patient record is written back only when the
    engine says it changed."""

    def __init__(self, care_plan: CarePlan | None) -> None:
        self.plan = care_plan
        self.engine = Engine()
        self.records: dict[Metric, MetricRecord] = {}
        self.stored = encode(PatientRecord())  # the patient record as the table holds it
        self.events: list = []

    @property
    def patient(self) -> PatientRecord:
        return decode_patient(self.stored)

    def deadline(self, clock: datetime) -> list:
        """What the shell's tick does when the patient's deadline is due."""
        patient = self.patient
        out, _changed = self.engine.deadline(
            PATIENT, patient, self.records, self.plan, clock=clock.timestamp(), now=clock
        )
        self.stored = encode(patient)
        self.events += out.events
        return out.events

    def feed(  # noqa: PLR0917  (mirrors a reading's fields, in their order)
        self,
        metric: Metric,
        value: float | None,
        at: datetime,
        unit: str | None = None,
        flag: str | None = None,
        clock: datetime | None = None,
        offset: int | None = None,
    ) -> list:
        record = self.records.setdefault(metric, MetricRecord())
        patient = self.patient
        m = reading(metric, value, at, unit, flag)
        out = self.engine.measurement(
            m, record, patient, self.plan, clock=(clock or at).timestamp(), now=at, offset=offset
        )
        self.records[metric] = decode_metric(encode(record))  # state survives its own encoding
        if out.patient_changed:
            self.stored = encode(patient)
        self.events += out.events
        return out.events

    def rules(self) -> set[str]:
        """The rules named by the events (an episode names its most severe rule)."""
        return {e.rule_id for e in self.events}

    def fired(self) -> set[str]:
        """Every rule that fired in an episode held, including those a more severe one outranked."""
        return {r for record in self.records.values() for e in record.episodes.values() for r in e.rules}


def daily(p: Patient, metric: Metric, values: list[float], start: datetime = T0) -> datetime:
    for i, v in enumerate(values):
        p.feed(metric, v, start + timedelta(days=i))
    return start + timedelta(days=len(values))


# ------------------------------------------------------------------ HF-1
@pytest.mark.parametrize(("gain", "fires"), [(2.0, False), (2.1, True)])
def test_hf1_fires_only_above_2_kg_in_3_days(gain: float, fires: bool) -> None:
    """HF-1 is "> 2 kg within 3 days": exactly 2.0 kg does not fire, 2.1 kg does (trap 2)."""
    p = Patient(plan(Condition.HEART_FAILURE))
    p.feed(Metric.BODY_WEIGHT, 80.3, T0)
    events = p.feed(Metric.BODY_WEIGHT, round(80.3 + gain, 1), T0 + timedelta(days=3))
    assert ("HF-1" in {e.rule_id for e in events}) is fires


def test_hf1_explains_itself_with_value_gain_and_reference_day() -> None:
    """The event carries the reading as reported, the reference reading and the rule."""
    p = Patient(plan(Condition.HEART_FAILURE))
    p.feed(Metric.BODY_WEIGHT, 80.0, datetime(2026, 11, 19, 7, tzinfo=UTC))
    (event,) = p.feed(Metric.BODY_WEIGHT, 82.3, datetime(2026, 11, 22, 7, tzinfo=UTC))
    assert event.explanation == "Weight 82.3 kg, +2.3 kg since 19 Nov (3 days); rule HF-1: > 2 kg in 3 days"
    assert event.severity is Severity.YELLOW
    assert event.change is EpisodeChange.OPENED
    assert event.baseline is not None
    assert event.baseline.value == 80.0
    assert event.threshold is not None
    assert (event.threshold.op, event.threshold.value) == (">", 2.0)


def test_hf1_does_not_count_a_reading_four_measurement_days_before() -> None:
    """A reading on the fourth local day before is outside "3 days", however few minutes past
    72 h it is: 23:59 on 28 Oct to 00:01 on 1 Nov (Oslo) is 72 h 2 min and does not fire."""
    p = Patient(plan(Condition.HEART_FAILURE))
    p.feed(Metric.BODY_WEIGHT, 80.0, _oslo(2026, 10, 28, 23, 59))
    events = p.feed(Metric.BODY_WEIGHT, 82.5, _oslo(2026, 11, 1, 0, 1))
    assert "HF-1" not in {e.rule_id for e in events}


def test_weight_in_pounds_is_compared_in_kilograms() -> None:
    """A gain reported in lb is judged on kg: 176.4 -> 181.5 lb is +2.31 kg."""
    p = Patient(plan(Condition.HEART_FAILURE))
    p.feed(Metric.BODY_WEIGHT, 176.4, T0, unit="[lb_av]")
    events = p.feed(Metric.BODY_WEIGHT, 181.5, T0 + timedelta(days=2), unit="[lb_av]")
    assert [e.rule_id for e in events] == ["HF-1"]
    assert events[0].latest is not None
    assert events[0].latest.unit == "[lb_av]"


# ------------------------------------------------------------------ glucose, trap 1
@pytest.mark.parametrize(
    ("value", "unit", "rule"),
    [
        (3.89, "mmol/L", "GL-1"),
        (3.9, "mmol/L", None),
        (70.0, "mg/dL", None),
        (69.0, "mg/dL", "GL-1"),
        (3.0, "mmol/L", "GL-1"),
        (2.99, "mmol/L", "GL-2"),
        (54.0, "mg/dL", "GL-1"),
        (53.0, "mg/dL", "GL-2"),
        (10.0, "mmol/L", None),
        (10.1, "mmol/L", "GL-3"),
        (180.0, "mg/dL", None),
        (181.0, "mg/dL", "GL-3"),
        (13.9, "mmol/L", "GL-3"),
        (14.0, "mmol/L", "GL-4"),
        (250.0, "mg/dL", "GL-3"),
        (251.0, "mg/dL", "GL-4"),
    ],
)
def test_glucose_is_compared_in_the_reported_unit(value: float, unit: str, rule: str | None) -> None:
    """3.89 mmol/L is a level-1 low and 70 mg/dL is not: each unit has its published pair."""
    p = Patient(plan(Condition.DIABETES))
    events = p.feed(Metric.GLUCOSE, value, T0, unit=unit)
    assert [e.rule_id for e in events] == ([rule] if rule else [])


@pytest.mark.parametrize(
    ("value", "unit", "shown"),
    [
        (13.0, "mmol/L", "Glucose 13.0 mmol/L"),
        (3.89, "mmol/L", "Glucose 3.89 mmol/L"),
        (69.0, "mg/dL", "Glucose 69 mg/dL"),
    ],
)
def test_glucose_is_shown_as_the_meter_shows_it(value: float, unit: str, shown: str) -> None:
    """13.0 mmol/L reads "13.0", not "13" (a nurse reads a missing decimal as a different meter)."""
    p = Patient(plan(Condition.DIABETES))
    (event,) = p.feed(Metric.GLUCOSE, value, T0, unit=unit)
    assert event.explanation.startswith(shown + ";")


@pytest.mark.parametrize(("flag", "rule"), [("HI", "GL-4"), ("LO", "GL-2")])
def test_meter_flags_are_level_2(flag: str, rule: str) -> None:
    """A meter's HI is a level-2 high and LO a level-2 low: red, not a data error."""
    p = Patient(plan(Condition.DIABETES))
    (event,) = p.feed(Metric.GLUCOSE, None, T0, flag=flag)
    assert (event.rule_id, event.severity) == (rule, Severity.RED)


def test_hypo_that_deepens_escalates_one_episode() -> None:
    """GL-1 then GL-2: one episode, escalated to red, never a second alert."""
    p = Patient(plan(Condition.DIABETES))
    first = p.feed(Metric.GLUCOSE, 3.5, T0)
    second = p.feed(Metric.GLUCOSE, 2.8, T0 + timedelta(minutes=30))
    third = p.feed(Metric.GLUCOSE, 3.4, T0 + timedelta(minutes=60))
    assert [e.change for e in first + second + third] == [
        EpisodeChange.OPENED,
        EpisodeChange.ESCALATED,
        EpisodeChange.UPDATED,
    ]
    assert len({e.episode_id for e in p.events}) == 1
    assert [e.version for e in p.events] == [1, 2, 3]
    assert third[0].severity is Severity.RED
    assert third[0].count == 3
    assert third[0].worst is not None
    assert third[0].worst.value == 2.8


def cgm_plan() -> CarePlan:
    return plan(Condition.DIABETES, expected=[ExpectedMeasurement(metric=Metric.GLUCOSE, every_minutes=5)])


@pytest.mark.parametrize(("minutes", "fires"), [(10, False), (15, True)])
def test_gl5_needs_15_minutes_below_3_on_a_continuous_monitor(minutes: int, fires: bool) -> None:
    """GL-5: a CGM level-2 low event needs >= 15 consecutive minutes below 3.0 mmol/L."""
    p = Patient(cgm_plan())
    for i in range(0, minutes + 1, 5):
        p.feed(Metric.GLUCOSE, 2.7, T0 + timedelta(minutes=i))
    assert ("GL-5" in p.rules()) is fires


# ------------------------------------------------------------------ temperature
@pytest.mark.parametrize(
    ("value", "unit", "rules"),
    [
        (38.0, "Cel", {"T-1"}),
        (37.9, "Cel", set()),
        (100.4, "[degF]", {"T-1"}),
        (35.0, "Cel", {"NEWS2-T"}),
        (34.9, "Cel", {"T-2", "NEWS2-T"}),
        (35.1, "Cel", set()),
    ],
)
def test_temperature_boundaries(value: float, unit: str, rules: set[str]) -> None:
    """Fever is >= 38.0 °C (100.4 °F too); 35.0 °C is not hypothermia (< 35.0) but is NEWS2 3."""
    p = Patient(plan(Condition.INFECTION_WATCH))
    p.feed(Metric.BODY_TEMPERATURE, value, T0, unit=unit)
    assert p.fired() == rules
    assert p.rules() <= rules


def test_t1_threshold_can_be_lowered_by_the_care_plan() -> None:
    """NHS Inform uses 37.8 °C: a plan override applies and is marked as coming from the plan."""
    p = Patient(plan(Condition.INFECTION_WATCH, thresholds={"T-1": {"cel": 37.8}}))
    (event,) = p.feed(Metric.BODY_TEMPERATURE, 37.8, T0)
    assert event.threshold is not None
    assert event.threshold.from_care_plan
    assert event.threshold.value == 37.8


# ------------------------------------------------------------------ SpO2 and pulse
@pytest.mark.parametrize(("scale", "alerts"), [(Spo2Scale.HYPERCAPNIC, False), (Spo2Scale.DEFAULT, True)])
def test_spo2_89_depends_on_the_prescribed_target(scale: Spo2Scale, alerts: bool) -> None:
    """89 % is inside a prescribed 88-92 % target, and an alert (RS-4, NEWS2 3) on the default scale."""
    p = Patient(plan(Condition.COPD, spo2_scale=scale))
    events = p.feed(Metric.SPO2, 89.0, T0)
    assert bool(events) is alerts


def test_spo2_scale_2_alerts_below_88() -> None:
    """On scale 2, RS-1 fires below the 88 % target and NEWS2-S2 at 83 %."""
    p = Patient(plan(Condition.COPD, spo2_scale=Spo2Scale.HYPERCAPNIC))
    assert not p.feed(Metric.SPO2, 88.0, T0)
    assert [e.rule_id for e in p.feed(Metric.SPO2, 87.0, T0 + timedelta(hours=1))] == ["RS-1"]
    (event,) = p.feed(Metric.SPO2, 83.0, T0 + timedelta(hours=2))
    assert (event.rule_id, event.severity, event.change) == (
        "NEWS2-S2",
        Severity.RED,
        EpisodeChange.ESCALATED,
    )


def test_news2_on_scale_1_is_a_sub_score_never_a_sum() -> None:
    """91 % scores 3 (red); 92 % scores 2, which alone is no trigger."""
    p = Patient(plan(Condition.HEART_FAILURE))
    assert not p.feed(Metric.SPO2, 92.0, T0)
    (event,) = p.feed(Metric.SPO2, 91.0, T0 + timedelta(hours=1))
    assert (event.rule_id, event.severity) == ("NEWS2-S1", Severity.RED)
    assert "NEWS2" in event.explanation
    assert "sub-score 3" in event.explanation


def stable_spo2(p: Patient, base: float = 95.0) -> datetime:
    return daily(p, Metric.SPO2, [base, base + 1, base, base - 1, base, base + 1, base])


@pytest.mark.parametrize(("value", "fires"), [(93.0, False), (92.0, True)])
def test_rs2_is_a_fall_of_3_points_from_the_personal_baseline(value: float, fires: bool) -> None:
    """RS-2 needs >= 3 points below the median of the patient's own stable days."""
    p = Patient(plan(Condition.COPD))
    after = stable_spo2(p)
    p.feed(Metric.SPO2, value, after)
    assert ("RS-2" in p.fired()) is fires


def test_baseline_rules_wait_for_enough_history() -> None:
    """With fewer than 5 readings over 5 days, only absolute thresholds may fire (RS-2 does not)."""
    p = Patient(plan(Condition.COPD))
    daily(p, Metric.SPO2, [96.0, 96.0, 96.0])
    p.feed(Metric.SPO2, 92.0, T0 + timedelta(days=3))
    assert "RS-2" not in p.rules()


@pytest.mark.parametrize(
    ("value", "rule"), [(40.0, "NEWS2-P"), (41.0, None), (131.0, "NEWS2-P"), (130.0, None)]
)
def test_news2_pulse_sub_score_3(value: float, rule: str | None) -> None:
    """Pulse scores 3 at <= 40 and >= 131 /min."""
    p = Patient(plan(Condition.INFECTION_WATCH, rules_off=["RS-8P"]))
    events = p.feed(Metric.PULSE, value, T0)
    assert [e.rule_id for e in events] == ([rule] if rule else [])


@pytest.mark.parametrize(("value", "fires"), [(110.0, False), (111.0, True), (40.0, False), (39.0, True)])
def test_hf4_pulse_limits_are_strict(value: float, fires: bool) -> None:
    """HF-4 is < 40 or > 110 /min."""
    p = Patient(plan(Condition.HEART_FAILURE, rules_off=["NEWS2-P"]))
    events = p.feed(Metric.PULSE, value, T0)
    assert ("HF-4" in {e.rule_id for e in events}) is fires


# ------------------------------------------------------------------ episodes, duplicates, late data
def test_duplicate_reading_is_ignored() -> None:
    """The same measurement id twice: counted once, no second event."""
    p = Patient(plan(Condition.DIABETES))
    assert p.feed(Metric.GLUCOSE, 3.5, T0)
    assert p.feed(Metric.GLUCOSE, 3.5, T0) == []
    assert p.records[Metric.GLUCOSE].history.count == 1


def test_a_reading_resent_after_many_newer_ones_is_still_a_duplicate() -> None:
    """After a long outage a kit resends a reading that 40 newer ones of the same metric have
    followed since (the id memory holds 32): its measured time and value are still known."""
    p = Patient(plan(Condition.COPD))
    assert p.feed(Metric.SPO2, 89, T0)  # opens NEWS2-S1
    for i in range(1, 41):
        p.feed(Metric.SPO2, 89, T0 + timedelta(minutes=i))
    episode_count = p.records[Metric.SPO2].history.count
    assert p.feed(Metric.SPO2, 89, T0) == [], "the resend changes nothing"
    assert p.records[Metric.SPO2].history.count == episode_count == 41
    # a different reading at the same instant (another value) is not taken for the resend
    assert p.records[Metric.SPO2].history.has_seen("f" * 32, T0.timestamp(), 90.0) is False


def test_a_partition_read_again_from_an_old_commit_changes_nothing() -> None:
    """Glucose readings over 12 h (the history keeps 2 h of them), then the partition is read again
    from its first offset: every replayed reading is recognised by its position, none by its id or
    time, and the hypo's episode is not counted twice."""
    p = Patient(plan(Condition.DIABETES))
    stream = [(0, 3.5)] + [(i, 6.0) for i in range(1, 48)]  # a hypo, then 47 normal readings
    for offset, (quarter, value) in enumerate(stream):
        p.feed(Metric.GLUCOSE, value, T0 + timedelta(minutes=15 * quarter), offset=offset)
    assert [e.change for e in p.events] == [EpisodeChange.OPENED]
    record = p.records[Metric.GLUCOSE]
    count = record.history.count
    assert not record.history.has_seen(reading(Metric.GLUCOSE, 3.5, T0).measurement_id, T0.timestamp(), 3.5)
    for offset, (quarter, value) in enumerate(stream):
        assert p.feed(Metric.GLUCOSE, value, T0 + timedelta(minutes=15 * quarter), offset=offset) == []
    assert p.records[Metric.GLUCOSE].history.count == count
    # without positions the old hypo would have opened a second episode: the test can fail
    q = Patient(plan(Condition.DIABETES))
    for quarter, value in stream:
        q.feed(Metric.GLUCOSE, value, T0 + timedelta(minutes=15 * quarter))
    (again,) = q.feed(Metric.GLUCOSE, 3.5, T0)
    assert (again.change, again.count) == (EpisodeChange.UPDATED, 2), "an unrecognised replay counts again"


def test_positions_do_not_hide_new_or_late_readings() -> None:
    """A late reading comes at a new position and counts; after the topic was recreated (positions
    from 0 again), a reading newer than any held is not taken for a replay."""
    p = Patient(plan(Condition.DIABETES))
    p.feed(Metric.GLUCOSE, 6.0, T0, offset=100)
    p.feed(Metric.GLUCOSE, 6.0, T0 + timedelta(minutes=30), offset=101)
    assert p.feed(Metric.GLUCOSE, 3.5, T0 + timedelta(minutes=10), offset=102), "late, at a new position"
    assert p.feed(Metric.GLUCOSE, 3.6, T0 + timedelta(hours=1), offset=0), "newer than anything held"
    assert p.records[Metric.GLUCOSE].offset == 0
    assert p.records[Metric.GLUCOSE].history.count == 4
    # a reading at an applied position measured before anything held is a replay the record can no
    # longer recognise (one within what it holds but not among it was never applied: it counts)
    assert p.feed(Metric.GLUCOSE, 3.0, T0 - timedelta(minutes=5), offset=0) == []
    assert p.records[Metric.GLUCOSE].history.count == 4


def test_state_written_before_positions_were_kept_still_decodes() -> None:
    """Records in a changelog from before the position field decode with no position."""
    old = msgspec.msgpack.encode([[[], [], [], None, 0.0, 0], {}])
    record = decode_metric(old)
    assert record.offset == -1


def test_episode_resolves_after_a_clear_period() -> None:
    """Normal readings resolve the episode once it has been clear for 24 h, with a version bump."""
    p = Patient(plan(Condition.DIABETES))
    p.feed(Metric.GLUCOSE, 3.5, T0)
    assert p.feed(Metric.GLUCOSE, 6.0, T0 + timedelta(hours=1)) == []
    assert p.feed(Metric.GLUCOSE, 6.0, T0 + timedelta(hours=24)) == []
    (event,) = p.feed(Metric.GLUCOSE, 6.0, T0 + timedelta(hours=25))
    assert (event.change, event.version) == (EpisodeChange.RESOLVED, 2)
    again = p.feed(Metric.GLUCOSE, 3.5, T0 + timedelta(hours=26))
    assert again[0].change is EpisodeChange.OPENED
    assert again[0].episode_id != event.episode_id


def test_reading_days_late_is_marked_and_not_urgent() -> None:
    """A hypo measured three days before the stream's clock is late and info, not red."""
    p = Patient(plan(Condition.DIABETES))
    (event,) = p.feed(Metric.GLUCOSE, 2.5, T0, clock=T0 + timedelta(days=3))
    assert event.late
    assert event.severity is Severity.INFO


def test_kit_silent_and_missed_are_separate_and_clear_when_data_returns() -> None:
    """A skipped window while the kit is alive is "missed"; no message for 13 h is "silent"."""
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
    p.feed(Metric.BODY_WEIGHT, 80.0, T0)  # 08:00, inside the window
    # next day: a pulse reading at 06:00 shows the kit alive, but no weight in 07:00-09:00
    p.feed(Metric.PULSE, 70.0, T0 + timedelta(hours=22))
    events = p.deadline(T0 + timedelta(days=1, hours=1, minutes=31))
    assert [(e.rule_id, e.change) for e in events] == [("measurement-missed", EpisodeChange.OPENED)]
    assert [e.change for e in p.feed(Metric.BODY_WEIGHT, 80.1, T0 + timedelta(days=1, hours=2))] == [
        EpisodeChange.RESOLVED
    ]
    events = p.deadline(T0 + timedelta(days=1, hours=15, minutes=1))
    assert [(e.rule_id, e.change) for e in events] == [("kit-silent", EpisodeChange.OPENED)]
    assert p.patient.episodes["kit_silent"].opened_at == (T0 + timedelta(days=1, hours=15)).timestamp()
    assert [e.rule_id for e in p.feed(Metric.PULSE, 70.0, T0 + timedelta(days=2))] == ["kit-silent"]


def test_readings_keep_the_kit_alive_without_rewriting_the_patient_record() -> None:
    """Readings every 4 h for two days: the patient record is written at the first only, yet the
    silent deadline (13 h after the record's `last_seen`) finds the kit alive and moves on; 13 h
    after the last reading it is silent."""
    p = Patient(None)
    first = p.stored
    for i in range(13):
        p.feed(Metric.PULSE, 70.0, T0 + timedelta(hours=4 * i))
    written = p.patient
    assert written.last_seen == T0.timestamp()  # only the first reading wrote it
    assert p.deadline(T0 + timedelta(hours=13, minutes=1)) == []
    assert p.stored != first
    assert p.patient.last_seen == (T0 + timedelta(hours=48)).timestamp()
    assert p.patient.wake_at == (T0 + timedelta(hours=48 + 13)).timestamp()
    assert [(e.rule_id, e.change) for e in p.deadline(T0 + timedelta(hours=48 + 13))] == [
        ("kit-silent", EpisodeChange.OPENED)
    ]


def test_rule_plan_defaults_without_a_care_plan() -> None:
    """An unplanned patient gets the absolute rules, never optional ones like HF-2 or T-3."""
    rules = rule_plan(None)
    assert rules.on("GL-2")
    assert rules.on("T-1")
    assert not rules.on("HF-2")
    assert not rules.on("T-3")


def test_state_per_patient_metric_stays_under_2_kb() -> None:
    """A CGM patient's glucose state after 35 days of 5-minute readings, with a high and a low
    episode held, stays below 2 KB as stored, and reads back as it was."""
    p = Patient(cgm_plan())
    for i in range(35 * 288):
        value = 6.0 + (i % 7) * 0.1
        if 100 <= i % 288 < 105:
            value = 3.2  # a low each day (a CGM event needs 15 minutes)
        elif 200 <= i % 288 < 205:
            value = 16.0  # and a high
        p.feed(Metric.GLUCOSE, value, T0 + timedelta(minutes=5 * i))
    record = p.records[Metric.GLUCOSE]
    assert {"glucose_low", "glucose_high"} <= set(record.episodes)
    assert len(msgspec.msgpack.encode(record)) > 2048, "the case compression is there for"
    stored = encode(record)
    assert len(stored) < 2048
    assert decode_metric(stored) == record


def test_small_records_are_stored_plain_as_before() -> None:
    """Only large records are compressed: a few readings stay plain msgpack, as records written
    before compression existed are, and both decode."""
    p = Patient(plan(Condition.HEART_FAILURE))
    p.feed(Metric.BODY_WEIGHT, 82.0, T0)
    record = p.records[Metric.BODY_WEIGHT]
    stored = encode(record)
    assert stored == msgspec.msgpack.encode(record)
    assert decode_metric(stored) == record
