"""Service hours and the duty roster as plain values (alerts/service_hours.py): Oslo's clock
changes, Norwegian public holidays, roster resolution at arbitrary instants, overlaps and gaps."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.service_hours import DutyRole, ServiceHours, Shift, gaps, on_duty, overlaps, parse_weekly

OSLO = ZoneInfo("Europe/Oslo")
WEEKDAYS = {str(d): [["08:00", "15:30"]] for d in range(5)}  # Monday-Friday 08:00-15:30


def oslo(y: int, m: int, d: int, hh: int = 0, mm: int = 0, *, fold: int = 0) -> datetime:
    return datetime(y, m, d, hh, mm, tzinfo=OSLO, fold=fold)


HOURS = ServiceHours("Europe/Oslo", parse_weekly(WEEKDAYS))


def test_open_from_opening_included_to_closing_excluded() -> None:
    """08:00 is open, 07:59 is not; 15:29 is open, 15:30 is not (Tuesday 1 December 2026)."""
    assert not HOURS.is_open(oslo(2026, 12, 1, 7, 59))
    assert HOURS.is_open(oslo(2026, 12, 1, 8, 0))
    assert HOURS.is_open(oslo(2026, 12, 1, 15, 29))
    assert not HOURS.is_open(oslo(2026, 12, 1, 15, 30))


def test_weekend_and_sunday_night_are_closed() -> None:
    """Saturday noon and Sunday 23:00 are outside service hours."""
    assert not HOURS.is_open(oslo(2026, 12, 5, 12))
    assert not HOURS.is_open(oslo(2026, 12, 6, 23))


def test_opening_is_wall_clock_time_in_summer_and_winter() -> None:
    """08:00 local is 07:00 UTC in winter and 06:00 UTC in summer; both open, the hour before not."""
    assert HOURS.is_open(datetime(2026, 1, 13, 7, 0, tzinfo=UTC))
    assert not HOURS.is_open(datetime(2026, 1, 13, 6, 59, tzinfo=UTC))
    assert HOURS.is_open(datetime(2026, 6, 16, 6, 0, tzinfo=UTC))
    assert not HOURS.is_open(datetime(2026, 6, 16, 5, 59, tzinfo=UTC))


def test_spring_forward_gap_opens_when_the_clocks_jump() -> None:
    """On 29 March 2026 02:00-03:00 does not exist in Oslo: a 02:30 opening opens at 03:00 local
    (01:00 UTC), not 30 minutes later and not never."""
    night = ServiceHours("Europe/Oslo", parse_weekly({"6": [["02:30", "05:00"]]}), public_holidays=False)
    assert not night.is_open(datetime(2026, 3, 29, 0, 59, tzinfo=UTC))
    assert night.is_open(datetime(2026, 3, 29, 1, 0, tzinfo=UTC))
    assert night.is_open(datetime(2026, 3, 29, 2, 59, tzinfo=UTC))  # 04:59 CEST
    assert not night.is_open(datetime(2026, 3, 29, 3, 0, tzinfo=UTC))  # 05:00 CEST


def test_repeated_autumn_hour_counts_from_its_first_occurrence() -> None:
    """On 25 October 2026 02:00-03:00 happens twice in Oslo: a 02:30-04:00 opening starts at the
    first 02:30 (00:30 UTC) and is still open in the second 02:xx hour."""
    night = ServiceHours("Europe/Oslo", parse_weekly({"6": [["02:30", "04:00"]]}), public_holidays=False)
    assert not night.is_open(datetime(2026, 10, 25, 0, 29, tzinfo=UTC))
    assert night.is_open(datetime(2026, 10, 25, 0, 30, tzinfo=UTC))
    assert night.is_open(oslo(2026, 10, 25, 2, 10, fold=1))
    assert night.is_open(datetime(2026, 10, 25, 2, 59, tzinfo=UTC))  # 03:59 CET
    assert not night.is_open(datetime(2026, 10, 25, 3, 0, tzinfo=UTC))  # 04:00 CET


@pytest.mark.parametrize(
    ("day", "name"),
    [
        (date(2026, 4, 2), "Maundy Thursday"),
        (date(2026, 4, 3), "Good Friday"),
        (date(2026, 4, 6), "Easter Monday"),
        (date(2026, 5, 1), "Labour Day"),
        (date(2026, 5, 14), "Ascension Day"),
        (date(2026, 5, 25), "Whit Monday"),
        (date(2026, 12, 25), "Christmas Day"),
        (date(2027, 5, 17), "Constitution Day"),
    ],
)
def test_norwegian_public_holidays_are_closed(day: date, name: str) -> None:
    """A weekday that is a Norwegian public holiday is closed all day; the weekday before is open."""
    noon = datetime.combine(day, time(12), OSLO)
    assert HOURS.closed_on(day) == "public holiday", name
    assert not HOURS.is_open(noon), name
    assert HOURS.is_open(datetime.combine(date(2026, 4, 1), time(12), OSLO))  # Wednesday before Easter


def test_holidays_can_be_kept_open_and_own_closed_days_added() -> None:
    """A team that works on public holidays stays open on Good Friday; its own closed date (a
    training day) is closed."""
    team = ServiceHours("Europe/Oslo", parse_weekly(WEEKDAYS), public_holidays=False,
                        closed_dates=frozenset({date(2026, 12, 2)}))  # fmt: skip
    assert team.is_open(oslo(2026, 4, 3, 12))
    assert team.closed_on(date(2026, 12, 2)) == "closed day"
    assert not team.is_open(oslo(2026, 12, 2, 12))


def test_next_opening_after_a_holiday_weekend() -> None:
    """Friday evening before Easter Monday: the next opening is Tuesday 7 April 08:00."""
    assert HOURS.next_opening(oslo(2026, 4, 3, 18)) == oslo(2026, 4, 7, 8).astimezone(UTC)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ({"7": [["08:00", "15:00"]]}, r"use 0 \(Monday\)"),
        ({"0": [["15:00", "08:00"]]}, "closes before it opens"),
        ({"0": [["8 o'clock", "15:00"]]}, "not a time HH:MM"),
        ({"0": [["08:00+01:00", "15:00"]]}, "not a time HH:MM"),
        ({"0": [["08:00:30", "15:00"]]}, "not a time HH:MM"),
        ({"0": [["24:00", "15:00"]]}, "not a time HH:MM"),
        ({"0": [[8, 15]]}, "not a time HH:MM"),
        ({"0": "08:00-15:00"}, "a list of"),
        ({"0": [["08:00", "12:00"], ["11:00", "15:00"]]}, "overlap"),
        ({"0": [["08:00"]]}, "each interval"),
    ],
)
def test_bad_hours_say_what_to_change(raw: dict[str, list[list[str]]], says: str) -> None:
    """A wrong weekday, an interval backwards, a bad time, overlapping intervals: a clear message."""
    with pytest.raises(ValueError, match=says):
        parse_weekly(raw)


def test_unknown_time_zone_is_refused() -> None:
    """A time zone that does not exist is a configuration error naming it."""
    with pytest.raises(ValueError, match="Mars/Olympus"):
        ServiceHours("Mars/Olympus")


def _shift(role: DutyRole, user: str, start: datetime, end: datetime, sid: int = 0) -> Shift:
    return Shift(role, user, f"mailto:{user}@example.org", start, end, sid)


def test_role_resolved_at_the_instant_start_included_end_excluded() -> None:
    """The day physician holds the role until 16:00 exactly; at 16:00 the evening one does."""
    day = _shift(DutyRole.ON_CALL_PHYSICIAN, "dr-day", oslo(2026, 12, 1, 8), oslo(2026, 12, 1, 16), 1)
    eve = _shift(DutyRole.ON_CALL_PHYSICIAN, "dr-eve", oslo(2026, 12, 1, 16), oslo(2026, 12, 2, 8), 2)
    nurse = _shift(DutyRole.NURSE_ON_DUTY, "nina", oslo(2026, 12, 1, 8), oslo(2026, 12, 1, 16), 3)
    roster = [day, eve, nurse]
    assert on_duty(roster, DutyRole.ON_CALL_PHYSICIAN, oslo(2026, 12, 1, 7, 59)) is None
    assert on_duty(roster, DutyRole.ON_CALL_PHYSICIAN, oslo(2026, 12, 1, 15, 59)) == day
    assert on_duty(roster, DutyRole.ON_CALL_PHYSICIAN, oslo(2026, 12, 1, 16)) == eve
    assert on_duty(roster, DutyRole.COORDINATOR, oslo(2026, 12, 1, 12)) is None


def test_overlapping_shifts_of_one_role_are_reported_touching_ones_not() -> None:
    """Two physicians at once is an error; back-to-back shifts and other roles are fine."""
    a = _shift(DutyRole.ON_CALL_PHYSICIAN, "a", oslo(2026, 12, 1, 8), oslo(2026, 12, 1, 16))
    b = _shift(DutyRole.ON_CALL_PHYSICIAN, "b", oslo(2026, 12, 1, 15), oslo(2026, 12, 1, 20))
    c = _shift(DutyRole.ON_CALL_PHYSICIAN, "c", oslo(2026, 12, 1, 16), oslo(2026, 12, 1, 20))
    n = _shift(DutyRole.NURSE_ON_DUTY, "n", oslo(2026, 12, 1, 8), oslo(2026, 12, 1, 16))
    assert overlaps([a, c, n]) == []
    (problem,) = overlaps([a, b, n])
    assert "on_call_physician" in problem
    assert "overlaps" in problem


def test_gaps_of_required_roles_during_service_hours() -> None:
    """A nurse on duty 08:00-12:00 leaves 12:00-15:30 uncovered that Tuesday; nights do not count."""
    n = _shift(DutyRole.NURSE_ON_DUTY, "n", oslo(2026, 12, 1, 8), oslo(2026, 12, 1, 12))
    found = gaps(HOURS, [n], [DutyRole.NURSE_ON_DUTY], start=oslo(2026, 12, 1), end=oslo(2026, 12, 2))
    assert found == [
        "nurse_on_duty: nobody on duty Tue 2026-12-01 12:00-15:30 during service hours; add a shift"
    ]
    full = _shift(DutyRole.NURSE_ON_DUTY, "m", oslo(2026, 12, 1, 12), oslo(2026, 12, 1, 18))
    assert (
        gaps(HOURS, [n, full], [DutyRole.NURSE_ON_DUTY], start=oslo(2026, 12, 1), end=oslo(2026, 12, 2)) == []
    )


_instants = st.datetimes(
    # hypothesis takes naive bounds; `timezones` makes each drawn instant aware
    min_value=datetime(2026, 1, 1),  # noqa: DTZ001
    max_value=datetime(2027, 12, 31),  # noqa: DTZ001
    timezones=st.just(UTC),
)


@settings(max_examples=300, deadline=None)
@given(at=_instants)
def test_is_open_agrees_with_the_open_periods(at: datetime) -> None:
    """At any instant, open exactly when an open period of that week contains it, and the next
    opening is never before the instant and is itself open."""
    inside = any(lo <= at < hi for lo, hi in HOURS.periods(at - timedelta(days=2), at + timedelta(days=2)))
    assert HOURS.is_open(at) == inside
    opens = HOURS.next_opening(at)
    assert opens is not None
    assert opens >= at
    assert HOURS.is_open(opens)


@st.composite
def _rosters(draw: st.DrawFn) -> list[Shift]:
    """Non-overlapping shifts per role, as a validated roster is."""
    roster: list[Shift] = []
    for role in DutyRole:
        at = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(minutes=draw(st.integers(0, 600)))
        for i in range(draw(st.integers(0, 6))):
            at += timedelta(minutes=draw(st.integers(0, 600)))
            end = at + timedelta(minutes=draw(st.integers(1, 900)))
            roster.append(Shift(role, f"{role.value}-{i}", "mailto:x@example.org", at, end, len(roster)))
            at = end
    return roster


@settings(max_examples=200, deadline=None)
@given(roster=_rosters(), minute=st.integers(0, 10_000), role=st.sampled_from(list(DutyRole)))
def test_roster_resolution_at_arbitrary_instants(roster: list[Shift], minute: int, role: DutyRole) -> None:
    """On a roster without overlaps, the role holder at any instant is the one shift of that role
    covering it, or nobody when none does; and such a roster reports no overlaps."""
    at = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(minutes=minute)
    covering = [s for s in roster if s.role is role and s.starts_at <= at < s.ends_at]
    assert len(covering) <= 1
    assert on_duty(roster, role, at) == (covering[0] if covering else None)
    assert overlaps(roster) == []


def test_open_until_midnight_and_from_midnight_leaves_no_gap() -> None:
    """Monday 16:00-24:00 and Tuesday 00:00-08:00 is one stretch: 23:59:59.9 and 00:00 both open,
    and it reads back as 24:00."""
    night = ServiceHours("Europe/Oslo", parse_weekly({"0": [["16:00", "24:00"]], "1": [["00:00", "08:00"]]}))
    assert night.is_open(oslo(2026, 11, 30, 23, 59) + timedelta(seconds=59.9))
    assert night.is_open(oslo(2026, 12, 1, 0, 0))
    assert not night.is_open(oslo(2026, 12, 1, 8, 0))
    assert [(lo, hi) for lo, hi in night.periods(oslo(2026, 11, 30, 12), oslo(2026, 12, 1, 12))] == [
        (oslo(2026, 11, 30, 16).astimezone(UTC), oslo(2026, 12, 1).astimezone(UTC)),
        (oslo(2026, 12, 1).astimezone(UTC), oslo(2026, 12, 1, 8).astimezone(UTC)),
    ]


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(raw=st.dictionaries(st.sampled_from([*map(str, range(8)), "x", "\x00"]), _json, max_size=4))
def test_any_weekly_json_is_hours_or_a_clear_refusal(raw: dict[str, Any]) -> None:
    """Whatever JSON a client sends as weekly hours: parsed hours, or a ValueError; never a crash."""
    try:
        parse_weekly(raw)
    except ValueError as exc:
        refusal = str(exc)
        assert refusal.startswith("weekday"), refusal
