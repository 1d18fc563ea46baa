"""What an event names and says: the rule that fires now, its reading, and times in the console's
time zone (issue #27, findings 3 and 8)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from alerts.settings import AlertsSettings
from contracts import (
    Condition,
    EpisodeChange,
    ExpectedMeasurement,
    Metric,
    ScheduleWindow,
    Severity,
)
from runtime.settings import ConfigError
from streams.monitor.catalogue import PROBLEMS, RULES, SPECIFIC_FIRST
from streams.monitor.engine import Engine
from streams.monitor.settings import MonitorSettings
from tests.unit.streams.test_monitor_rules import T0, Patient, plan

TEMP = Metric.BODY_TEMPERATURE


# ------------------------------------------------------------------ the rule that fires now (finding 3)
def test_a_deeper_reading_names_hypothermia_and_quotes_itself() -> None:
    """35.0 °C opens a NEWS2-T episode; a later 34.8 °C is hypothermia: the update names T-2, its
    threshold, and quotes 34.8 °C, not the reading that opened the episode."""
    p = Patient(plan(Condition.HEART_FAILURE))
    (opened,) = p.feed(TEMP, 35.0, T0)
    assert (opened.rule_id, opened.change) == ("NEWS2-T", EpisodeChange.OPENED)
    (update,) = p.feed(TEMP, 34.8, T0 + timedelta(hours=2))
    assert update.episode_id == opened.episode_id
    assert (update.rule_id, update.change, update.severity) == ("T-2", EpisodeChange.UPDATED, Severity.RED)
    assert update.explanation == "Temperature 34.8 °C; rule T-2: hypothermia: < 35.0 °C"
    assert update.threshold is not None
    assert (update.threshold.op, update.threshold.value) == ("<", 35.0)
    assert update.rule_source == RULES["T-2"].source


def test_each_version_names_the_rule_its_own_reading_fulfils() -> None:
    """Back at 35.0 °C the episode names NEWS2-T again: the event says what fires now."""
    p = Patient(plan(Condition.HEART_FAILURE))
    p.feed(TEMP, 34.8, T0)
    (update,) = p.feed(TEMP, 35.0, T0 + timedelta(hours=2))
    assert update.rule_id == "NEWS2-T"
    assert update.explanation.startswith("Temperature 35.0 °C: NEWS2 temperature sub-score 3")


def test_at_equal_severity_the_more_specific_rule_is_named() -> None:
    """34.8 °C fulfils both T-2 (< 35.0) and NEWS2-T (<= 35.0), both red: T-2 fires on fewer
    readings, so it is named; both are kept in the episode's rules."""
    p = Patient(plan(Condition.HEART_FAILURE))
    (event,) = p.feed(TEMP, 34.8, T0)
    assert event.rule_id == "T-2"
    assert p.fired() == {"T-2", "NEWS2-T"}


def test_spo2_within_both_red_rules_names_the_narrower_news2_limit() -> None:
    """SpO2 90 % on infection watch is red by RS-6 (<= 92) and NEWS2-S1 (<= 91): NEWS2-S1 is named."""
    p = Patient(plan(Condition.INFECTION_WATCH))
    (event,) = p.feed(Metric.SPO2, 90.0, T0)
    assert event.rule_id == "NEWS2-S1"


def test_a_milder_reading_names_its_own_rule_and_the_severity_stays() -> None:
    """A red SpO2 episode updated by a reading that is only a review (93 %) names RS-6's review and
    quotes 93 %; the episode stays red and keeps its worst reading."""
    p = Patient(plan(Condition.INFECTION_WATCH))
    p.feed(Metric.SPO2, 90.0, T0)
    (update,) = p.feed(Metric.SPO2, 93.0, T0 + timedelta(hours=1))
    assert (update.rule_id, update.severity) == ("RS-6", Severity.RED)
    assert update.explanation.startswith("SpO2 93 %: review on the home oximetry pathway")
    assert update.worst is not None
    assert update.worst.value == 90.0


def test_every_rule_of_a_problem_has_one_place_in_the_specificity_order() -> None:
    """`SPECIFIC_FIRST` lists each problem's rules exactly once, so every tie has an answer."""
    assert set(SPECIFIC_FIRST) == set(PROBLEMS)
    for problem, order in SPECIFIC_FIRST.items():
        assert len(order) == len(set(order))
        assert set(order) == {r for r, rule in RULES.items() if rule.problem == problem}, problem


# ------------------------------------------------------------------ times in the console's zone (finding 8)
def test_kit_silent_gives_the_last_message_in_the_consoles_time_zone() -> None:
    """The last message at 08:00 UTC in November is 09:00 CET on the console, and says so."""
    p = Patient(None)
    p.feed(Metric.PULSE, 70.0, T0)
    (event,) = p.deadline(T0 + timedelta(hours=13))
    assert event.explanation.startswith("No message from the kit since 1 Nov 09:00 CET (13 h)")


def test_a_missed_window_is_given_in_the_consoles_time_zone() -> None:
    """A 07:00-09:00 window in the patient's Oslo plan reads 07:00 CET to 09:00 CET, never UTC."""
    care = plan(
        Condition.HEART_FAILURE,
        expected=[
            ExpectedMeasurement(
                metric=Metric.BODY_WEIGHT, windows=[ScheduleWindow(start="07:00", end="09:00")]
            )
        ],
    )
    p = Patient(care)
    p.feed(Metric.PULSE, 70.0, datetime(2026, 11, 2, 5, 0, tzinfo=UTC))  # 06:00 CET: the kit is alive
    events = p.deadline(datetime(2026, 11, 2, 8, 31, tzinfo=UTC))
    assert [e.explanation.split(";")[0] for e in events] == [
        "No body weight reading between 2 Nov 07:00 CET and 2 Nov 09:00 CET while the kit was active"
    ]


def test_a_resolved_episode_gives_its_clear_time_in_the_consoles_time_zone() -> None:
    """The all-clear time of a resolved episode is the console's clock (CET in November)."""
    p = Patient(plan(Condition.HEART_FAILURE))
    p.feed(TEMP, 34.8, T0)
    p.feed(TEMP, 36.8, T0 + timedelta(hours=1))
    (resolved,) = p.feed(TEMP, 36.9, T0 + timedelta(hours=26))
    assert resolved.change is EpisodeChange.RESOLVED
    assert "clear since 1 Nov 10:00 CET" in resolved.explanation


def test_a_weight_reference_day_is_the_consoles_date() -> None:
    """A weighing at 23:30 UTC on 18 Nov was on 19 Nov in Oslo, and the explanation says 19 Nov."""
    p = Patient(plan(Condition.HEART_FAILURE))
    p.feed(Metric.BODY_WEIGHT, 80.0, datetime(2026, 11, 18, 23, 30, tzinfo=UTC))
    (event,) = p.feed(Metric.BODY_WEIGHT, 82.3, datetime(2026, 11, 22, 7, tzinfo=UTC))
    assert event.explanation.startswith("Weight 82.3 kg, +2.3 kg since 19 Nov (3 days)")


def test_the_engine_shows_times_in_the_zone_it_is_given() -> None:
    """A centre configured for another zone reads its own clock in the text."""
    p = Patient(None)
    p.engine = Engine(shown_in=ZoneInfo("America/New_York"))
    p.feed(Metric.PULSE, 70.0, T0)
    (event,) = p.deadline(T0 + timedelta(hours=13))
    assert "since 1 Nov 03:00 EST" in event.explanation


def test_the_monitor_reads_the_consoles_time_zone_variable() -> None:
    """The monitor takes VAKTROM_ALERTS_TIME_ZONE, with the alert service's default, so both show
    one clock; an unknown zone stops it at start-up naming the variable."""
    assert MonitorSettings.from_env({}).time_zone == AlertsSettings.from_env({}).time_zone == "Europe/Oslo"
    assert MonitorSettings.from_env({"VAKTROM_ALERTS_TIME_ZONE": "UTC"}).time_zone == "UTC"
    with pytest.raises(ConfigError, match="VAKTROM_ALERTS_TIME_ZONE='Mars/Olympus'"):
        MonitorSettings.from_env({"VAKTROM_ALERTS_TIME_ZONE": "Mars/Olympus"})
