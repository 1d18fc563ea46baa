"""A team's service hours and duty roster, as plain values: is the centre open at an instant, who
holds a role then, and what is wrong with a roster (no database here; `alerts.duty` stores them).

Service hours are weekly opening intervals in the team's own time zone (wall-clock times, so
08:00 is 08:00 in winter and in summer), closed on Norwegian public holidays (the `holidays`
library's calendar for Norway, kept up to date by its maintainers; movable feasts such as Easter
and Ascension need a real calendar, not a list) and on the team's own closed dates. A day's interval
runs from the first instant its opening time names to the first instant its closing time names
(start included, end excluded), on local dates that are not closed. On the nights the clocks
change, a wall-clock time that happens twice counts from its first occurrence, and one that does
not exist (the skipped spring hour) from the moment the clocks jump; every instant has one answer.

A roster is a list of shifts (role, user, contact, start, end; instants, start included, end
excluded). Two shifts of one role that overlap are an error (who would be called?); a required
role with nobody on duty during service hours is a gap, reported so a manager can fill it.
"""

from __future__ import annotations

import enum
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays

__all__ = [
    "DutyRole",
    "ServiceHours",
    "Shift",
    "gaps",
    "hhmm",
    "on_duty",
    "overlaps",
    "parse_weekly",
]


class DutyRole(enum.StrEnum):
    NURSE_ON_DUTY = "nurse_on_duty"
    COORDINATOR = "coordinator"
    ON_CALL_PHYSICIAN = "on_call_physician"


@lru_cache(maxsize=64)
def _norwegian(year: int) -> frozenset[date]:
    return frozenset(holidays.country_holidays("NO", years=year).keys())


Interval = tuple[time, time]


def parse_weekly(raw: Mapping[str, Sequence[Sequence[str]]]) -> dict[int, tuple[Interval, ...]]:
    """{"0": [["08:00", "15:30"]], ...} (weekday 0 is Monday) into intervals; ValueError with a
    message a manager can act on when a day, a time or an interval is wrong."""
    weekly: dict[int, tuple[Interval, ...]] = {}
    for key, intervals in raw.items():
        if key not in {str(d) for d in range(7)}:
            raise ValueError(f"weekday {key!r}: use 0 (Monday) to 6 (Sunday)")
        parsed: list[Interval] = []
        if not isinstance(intervals, (list, tuple)):
            raise ValueError(f"weekday {key}: give a list of [opens, closes] intervals")
        for pair in intervals:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise ValueError(f"weekday {key}: each interval is [opens, closes]")
            opens, closes = _clock(pair[0], key), _clock(pair[1], key, end=True)
            if closes <= opens:
                raise ValueError(f"weekday {key}: {pair[0]}-{pair[1]} closes before it opens")
            parsed.append((opens, closes))
        parsed.sort()
        for (_, end), (start, _) in itertools.pairwise(parsed):
            if start < end:
                raise ValueError(f"weekday {key}: opening intervals overlap")
        weekly[int(key)] = tuple(parsed)
    return weekly


_HHMM = re.compile(r"([01]\d|2[0-3]):[0-5]\d|24:00")
END_OF_DAY = time.max  # "24:00": open until midnight


def _clock(text: object, key: str, *, end: bool = False) -> time:
    """HH:MM (and 24:00 for a closing time) as a time of day; ValueError otherwise."""
    if not isinstance(text, str) or not _HHMM.fullmatch(text) or (text == "24:00" and not end):
        raise ValueError(f"weekday {key}: {text!r} is not a time HH:MM (00:00-23:59, or 24:00 to close)")
    return END_OF_DAY if text == "24:00" else time.fromisoformat(text)


def hhmm(at: time) -> str:
    """A time of day as the configuration writes it (END_OF_DAY as 24:00)."""
    return "24:00" if at == END_OF_DAY else at.strftime("%H:%M")


@dataclass(frozen=True, slots=True)
class ServiceHours:
    """When a team's centre is staffed."""

    time_zone: str = "Europe/Oslo"
    weekly: Mapping[int, tuple[Interval, ...]] = field(default_factory=dict)
    public_holidays: bool = True  # closed on Norwegian public holidays
    closed_dates: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.time_zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"time zone {self.time_zone!r} is unknown (use one like Europe/Oslo)") from None

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    def closed_on(self, day: date) -> str | None:
        """Why the centre is closed all of `day` (a local date), or None when it is not."""
        if day in self.closed_dates:
            return "closed day"
        if self.public_holidays and day in _norwegian(day.year):
            return "public holiday"
        return None

    def is_open(self, at: datetime) -> bool:
        """Whether `at` (an aware instant) falls in service hours (defined by `periods`, so the two
        never disagree, across clock changes too)."""
        return next(self.periods(at, at + timedelta(microseconds=1)), None) is not None

    def periods(self, start: datetime, end: datetime) -> Iterator[tuple[datetime, datetime]]:
        """The open periods overlapping [start, end), as UTC instants, clipped to it."""
        zone = self.zone
        day = start.astimezone(zone).date() - timedelta(days=1)
        while datetime.combine(day, time(0), zone) < end:
            if self.closed_on(day) is None:
                for opens, closes in self.weekly.get(day.weekday(), ()):
                    lo = _instant(day, opens, zone)
                    hi = (
                        _instant(day + timedelta(days=1), time(0), zone)
                        if closes == END_OF_DAY
                        else (_instant(day, closes, zone))
                    )
                    lo, hi = max(lo, start), min(hi, end)
                    if lo < hi:
                        yield lo.astimezone(UTC), hi.astimezone(UTC)
            day += timedelta(days=1)

    def next_opening(self, at: datetime, *, horizon: timedelta = timedelta(days=21)) -> datetime | None:
        """The first instant at or after `at` in service hours (None within `horizon`: never open)."""
        if self.is_open(at):
            return at
        return next((lo for lo, _ in self.periods(at, at + horizon)), None)


def _instant(day: date, wall: time, zone: ZoneInfo) -> datetime:
    """The instant a wall-clock time of `day` first names: in the repeated autumn hour, the first of
    the two; in the spring-forward gap (02:30 does not exist in Oslo that night), the moment the
    clocks jump, which is the first instant whose wall-clock time is past it."""
    naive = datetime.combine(day, wall)
    first = naive.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == naive:
        return first
    # Did not exist: fold=1 names an instant before the jump; step to the jump (within the hour).
    at = naive.replace(tzinfo=zone, fold=1).astimezone(UTC).replace(second=0, microsecond=0)
    while at.astimezone(zone).replace(tzinfo=None) < naive:
        at += timedelta(minutes=1)
    return at


@dataclass(frozen=True, slots=True)
class Shift:
    """Someone holds a role from `starts_at` (included) to `ends_at` (excluded)."""

    role: DutyRole
    username: str
    contact: str  # https:// webhook or mailto: address
    starts_at: datetime
    ends_at: datetime
    shift_id: int | None = None

    def covers(self, at: datetime) -> bool:
        return self.starts_at <= at < self.ends_at


def on_duty(shifts: Iterable[Shift], role: DutyRole, at: datetime) -> Shift | None:
    """Who holds `role` at `at`: the covering shift (the one that started last, should a roster
    that skipped validation overlap), or None."""
    covering = [s for s in shifts if s.role is role and s.covers(at)]
    return max(covering, key=lambda s: (s.starts_at, s.shift_id or 0), default=None)


def overlaps(shifts: Sequence[Shift]) -> list[str]:
    """Messages for every pair of shifts of one role that overlap (each pair once)."""
    problems = []
    ordered = sorted(shifts, key=lambda s: (s.role.value, s.starts_at))
    for i, a in enumerate(ordered):
        for b in ordered[i + 1 :]:
            if b.role is not a.role or b.starts_at >= a.ends_at:
                continue
            problems.append(
                f"{a.role.value}: {a.username} ({_hm(a.starts_at)}-{_hm(a.ends_at)}) overlaps "
                f"{b.username} ({_hm(b.starts_at)}-{_hm(b.ends_at)}); shorten one of the shifts"
            )
    return problems


def gaps(
    hours: ServiceHours,
    shifts: Sequence[Shift],
    required: Iterable[DutyRole],
    *,
    start: datetime,
    end: datetime,
) -> list[str]:
    """Messages for every stretch of service hours in [start, end) in which a required role has
    nobody on duty, in the team's local time."""
    problems = []
    for role in required:
        covered = sorted((s.starts_at, s.ends_at) for s in shifts if s.role is role)
        for lo, hi in hours.periods(start, end):
            for g_lo, g_hi in _uncovered(lo, hi, covered):
                problems.append(
                    f"{role.value}: nobody on duty {_local(g_lo, hours)}-{_local(g_hi, hours, short=True)} "
                    "during service hours; add a shift"
                )
    return problems


def _uncovered(
    lo: datetime, hi: datetime, covered: Sequence[tuple[datetime, datetime]]
) -> Iterator[tuple[datetime, datetime]]:
    cursor = lo
    for s, e in covered:
        if e <= cursor or s >= hi:
            continue
        if s > cursor:
            yield cursor, min(s, hi)
        cursor = max(cursor, e)
        if cursor >= hi:
            return
    if cursor < hi:
        yield cursor, hi


def _hm(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _local(at: datetime, hours: ServiceHours, *, short: bool = False) -> str:
    return at.astimezone(hours.zone).strftime("%H:%M" if short else "%a %Y-%m-%d %H:%M")
