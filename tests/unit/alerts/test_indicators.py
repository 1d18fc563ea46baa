"""The indicators' arithmetic at its boundaries (alerts.indicators, alerts.activity; docs/indicators.md)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from alerts import activity
from alerts.indicators import (
    AlertRow,
    Ratio,
    adherence,
    compliance,
    expected_per_day,
    followed_days,
    patients_per_nurse,
    plan_on,
    rate_per_30_days,
)
from alerts.workers.escalation import Targets

T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
RED = timedelta(minutes=5)
OSLO = ZoneInfo("Europe/Oslo")


def _alert(
    waited: timedelta | None, *, severity: str = "red", after_hours: str | None = None, pid: str = "p1"
) -> AlertRow:
    return AlertRow(
        episode_id="e" * 32, patient_id=pid, severity=severity, opened_at=T0, received_at=T0,
        responded_at=None if waited is None else T0 + waited, after_hours=after_hours,
        state="resolved" if waited else "new", resolution="contacted_no_action" if waited else None,
        closed_at=T0 + waited if waited else None,
    )  # fmt: skip


def test_a_response_exactly_at_the_target_complies_and_one_second_later_does_not() -> None:
    """Waiting exactly the target is within it; a second more is not."""
    at = compliance([_alert(RED)], severity="red", target=RED, now=T0 + timedelta(hours=1))
    late = compliance(
        [_alert(RED + timedelta(seconds=1))], severity="red", target=RED, now=T0 + timedelta(hours=1)
    )
    early = compliance(
        [_alert(RED - timedelta(seconds=1))], severity="red", target=RED, now=T0 + timedelta(hours=1)
    )
    assert (at.numerator, at.denominator, at.value) == (1, 1, 1.0)
    assert (late.numerator, late.denominator, late.value) == (0, 1, 0.0)
    assert early.value == 1.0


def test_an_unanswered_alert_counts_as_missed_only_once_its_target_has_passed() -> None:
    """Unanswered at exactly the target: not yet counted; a second past it: counted and missed."""
    pending = compliance([_alert(None)], severity="red", target=RED, now=T0 + RED)
    missed = compliance([_alert(None)], severity="red", target=RED, now=T0 + RED + timedelta(seconds=1))
    assert (pending.denominator, pending.value) == (0, None)
    assert (missed.numerator, missed.denominator) == (0, 1)


def test_no_alerts_gives_no_value_rather_than_a_division_by_zero() -> None:
    """An empty week has no compliance, no rate, no adherence: None, never an error and never 0 %."""
    assert compliance([], severity="red", target=RED, now=T0).value is None
    assert rate_per_30_days(0, 0.0).value is None
    assert adherence({}, {}).value is None
    assert patients_per_nurse([], [], T0, T0 + timedelta(days=7)).value is None
    assert Ratio(3, 0).value is None


def test_other_severities_out_of_hours_alerts_and_info_are_not_counted() -> None:
    """Only the asked severity counts; an alert handled out of hours has no centre target; info has none."""
    alerts = [_alert(RED), _alert(RED, severity="yellow"), _alert(None, after_hours="routed")]
    assert compliance(alerts, severity="red", target=RED, now=T0 + timedelta(days=1)) == Ratio(1, 1)
    assert compliance(alerts, severity="info", target=Targets().info, now=T0 + timedelta(days=1)) == Ratio(
        0, 0
    )


def test_expected_readings_per_day_from_the_plan() -> None:
    """One per window, 1440/every_minutes for a continuous metric, nothing without a plan or a schedule."""
    plan = {
        "expected": [
            {"metric": "body_weight", "windows": [{"start": "07:00", "end": "10:00"}]},
            {
                "metric": "spo2",
                "windows": [{"start": "07:00", "end": "10:00"}, {"start": "18:00", "end": "21:00"}],
            },
            {"metric": "pulse", "every_minutes": 7},
            {"metric": "glucose"},
        ]
    }
    assert expected_per_day(plan) == {"body_weight": 1, "spo2": 2, "pulse": 205}
    assert expected_per_day(None) == {}
    assert expected_per_day({"expected": []}) == {}


def test_adherence_caps_each_day_and_ignores_unplanned_metrics() -> None:
    """Three weighings on a day that asked for one count as one; a missed day is not made up."""
    day1, day2 = date(2026, 11, 2), date(2026, 11, 3)
    expected = {("p1", day1, "body_weight"): 1, ("p1", day2, "body_weight"): 1}
    received = {("p1", day1, "body_weight"): 3, ("p1", day1, "pulse"): 10}
    assert adherence(expected, received) == Ratio(1, 2)
    assert adherence(expected, received).value == 0.5


def test_the_plan_in_force_is_the_newest_accepted_before_the_moment() -> None:
    """A version accepted exactly at the moment is not yet in force."""
    v1, v2 = {"expected": [], "v": 1}, {"expected": [], "v": 2}
    versions = [(1, T0, v1), (2, T0 + timedelta(days=1), v2)]
    assert plan_on(versions, T0) is None
    assert plan_on(versions, T0 + timedelta(seconds=1)) is v1
    assert plan_on(versions, T0 + timedelta(days=1)) is v1
    assert plan_on(versions, T0 + timedelta(days=2)) is v2


def test_alerts_per_patient_per_30_days() -> None:
    """One alert over one patient followed 30 days is 1.0; followed days clip to enrolment and discharge."""
    patients = [("p1", T0, None), ("p2", T0 + timedelta(days=15), T0 + timedelta(days=20))]
    days = followed_days(patients, T0, T0 + timedelta(days=30))
    assert days == 35.0
    assert rate_per_30_days(1, 30.0).value == 1.0
    assert rate_per_30_days(7, days).value == 6.0


def test_patients_per_nurse_over_the_covered_hours_only() -> None:
    """Ten patients, one nurse for two hours then two nurses for two hours, nobody after: (10+10+5+5)/4."""
    patients = [(f"p{i}", T0 - timedelta(days=1), None) for i in range(10)]
    shifts = [(T0, T0 + timedelta(hours=4)), (T0 + timedelta(hours=2), T0 + timedelta(hours=4))]
    ratio = patients_per_nurse(patients, shifts, T0, T0 + timedelta(hours=8))
    assert ratio == Ratio(30, 4)
    assert ratio.value == 7.5


def _data(plans: dict[str, list[tuple[int, datetime, dict[str, object]]]]) -> activity.TeamData:
    enrolled = datetime(2026, 10, 1, tzinfo=UTC)
    return activity.TeamData(
        team_id="t", zone=OSLO, patients=[("p1", enrolled, None), ("p2", enrolled, None)], plans=plans,
        alerts=[_alert(RED, pid="p1"), _alert(None, severity="yellow", pid="p1")],
        escalations=[T0 + timedelta(minutes=6)], nurse_shifts=[],
        counts={("p1", date(2026, 11, 2), "body_weight"): 2, ("p2", date(2026, 11, 2), "body_weight"): 1},
        answers={("p1", date(2026, 11, 3)): 1},
    )  # fmt: skip


def test_a_patient_without_a_plan_expects_nothing_but_still_has_activity() -> None:
    """p2 has no plan: expected 0, its readings still counted as received; p1's month counts its alert
    by severity and outcome and its contact by resolution code."""
    plan = {"expected": [{"metric": "body_weight", "windows": [{"start": "07:00", "end": "10:00"}]}]}
    data = _data({"p1": [(1, datetime(2026, 10, 1, tzinfo=UTC), plan)]})
    now = datetime(2026, 11, 5, 12, tzinfo=UTC)  # Nov 1-4 have ended in Oslo
    rows = {r["patient"]: r for r in activity.monthly(data, activity.months(now, 1, OSLO), now)}
    assert rows["p1"]["month"] == "2026-11"
    assert (rows["p1"]["expected"], rows["p1"]["received_against_plan"], rows["p1"]["received"]) == (4, 1, 2)
    assert (rows["p2"]["expected"], rows["p2"]["received_against_plan"], rows["p2"]["received"]) == (0, 0, 1)
    assert rows["p1"]["answers"] == 1
    assert rows["p1"]["contacts_contacted_no_action"] == 1
    assert (rows["p1"]["alerts_red"], rows["p1"]["alerts_yellow"]) == (1, 1)
    assert (rows["p1"]["outcome_resolved"], rows["p1"]["outcome_open"]) == (1, 1)
    csv_text = activity.to_csv(list(rows.values()))
    assert csv_text.splitlines()[0] == ",".join(activity.CSV_COLUMNS)
    bundle = activity.to_fhir(list(rows.values()), "t", now=now)
    report = bundle["entry"][0]["resource"]
    assert (report["resourceType"], report["type"], report["period"]) == (
        "MeasureReport", "individual", {"start": "2026-11-01", "end": "2026-11-30"},
    )  # fmt: skip
    assert len(report["group"]) == len(activity.CSV_COLUMNS) - 2


def test_weekly_indicators_of_a_week_without_anything_are_empty_not_zero() -> None:
    """A team without patients or alerts: every ratio None, escalations 0."""
    empty = activity.TeamData("t", OSLO, [], {}, [], [], [])
    now = datetime(2026, 11, 5, 12, tzinfo=UTC)
    (week,) = activity.weekly(empty, activity.weeks(now, 1, OSLO), Targets(), now)
    assert week["compliance_red"] is None
    assert week["adherence"] is None
    assert week["alerts_per_30_days"] is None
    assert week["patients_per_nurse"] is None
    assert week["escalations"] == 0


def test_weeks_and_months_are_local_calendar_periods() -> None:
    """A Monday 00:30 in Oslo is still Sunday in UTC, and belongs to the new local week."""
    now = datetime(2026, 11, 1, 23, 30, tzinfo=UTC)  # Monday 2 November 00:30 in Oslo
    (week,) = activity.weeks(now, 1, OSLO)
    assert week[0] == datetime(2026, 11, 2, tzinfo=OSLO)
    months = activity.months(datetime(2026, 1, 15, tzinfo=UTC), 2, OSLO)
    assert [m[0].date() for m in months] == [date(2025, 12, 1), date(2026, 1, 1)]


def test_the_alert_rate_looks_back_30_days_from_the_weeks_end() -> None:
    """One patient followed throughout, one alert opened 29 days before the week's end: 1.0 per 30
    days; opened 30 days before it (exactly the window's start) it still counts, a second earlier not."""
    now = datetime(2026, 12, 7, 12, tzinfo=UTC)
    (week,) = activity.weeks(now, 1, OSLO)
    upto = now  # the current week ends now
    for before, expected in (
        (timedelta(days=29), 1),
        (timedelta(days=30), 1),
        (timedelta(days=30, seconds=1), 0),
    ):
        alert = AlertRow(
            "e" * 32, "p1", "yellow", upto - before, upto - before, None, None, "new", None, None
        )
        data = activity.TeamData("t", OSLO, [("p1", now - timedelta(days=90), None)], {}, [alert], [], [])
        (row,) = activity.weekly(data, [week], Targets(), now)
        assert row["alerts_per_30_days"] == expected, before
        assert row["alerts_per_30_days_of"] == [expected * 30, 30.0]
