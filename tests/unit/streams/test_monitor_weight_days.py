"""HF-1 and HF-2 count measurement days in the patient's time zone, not hours (issue #27, finding 5)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import Condition, Metric
from streams.monitor.history import History, Point
from streams.monitor.plan import rule_plan
from streams.monitor.rules import evaluate
from tests.unit.streams.test_monitor_rules import OSLO, Patient, _oslo, plan


def _gain_rules(events: list) -> set[str]:  # type: ignore[type-arg]
    return {e.rule_id for e in events} & {"HF-1", "HF-2"}


@pytest.mark.parametrize("minutes_earlier", [10, 1, 0, -1, -10])
def test_hf1_counts_three_mornings_whatever_the_minute_of_the_first(minutes_earlier: int) -> None:
    """+2.3 kg over three mornings fires HF-1 whether the first weighing was 72 h 10 min, 72 h 1 min,
    exactly 72 h, or 71 h 50 min before the last (before: only at or within 72 h)."""
    p = Patient(plan(Condition.HEART_FAILURE))
    p.feed(Metric.BODY_WEIGHT, 80.0, _oslo(2026, 12, 1, 8, 0) - timedelta(minutes=minutes_earlier))
    p.feed(Metric.BODY_WEIGHT, 81.0, _oslo(2026, 12, 2, 8, 0))
    p.feed(Metric.BODY_WEIGHT, 81.8, _oslo(2026, 12, 3, 8, 0))
    events = p.feed(Metric.BODY_WEIGHT, 82.3, _oslo(2026, 12, 4, 8, 0))
    assert _gain_rules(events) == {"HF-1"}
    (event,) = events
    assert event.explanation.startswith("Weight 82.3 kg, +2.3 kg since 1 Dec (3 days); rule HF-1")
    assert event.baseline is not None
    assert event.baseline.value == 80.0
    assert event.threshold is not None
    assert event.threshold.window == "3d"


@pytest.mark.parametrize(
    ("first", "last", "fires"),
    [
        # the latest fourth-day minute and the earliest third-day minute around 72 h
        (_oslo(2026, 11, 28, 23, 59), _oslo(2026, 12, 2, 0, 1), False),  # 72 h 2 min, 4 days
        (_oslo(2026, 11, 29, 0, 1), _oslo(2026, 12, 2, 23, 59), True),  # 95 h 58 min, 3 days
        (_oslo(2026, 11, 29, 23, 59), _oslo(2026, 12, 2, 0, 1), True),  # 48 h 2 min, 3 days
        # summer time ends on 25 Oct 2026 (a 25-hour day) and starts on 29 Mar (a 23-hour day)
        (_oslo(2026, 10, 24, 7, 0), _oslo(2026, 10, 27, 7, 0), True),  # 73 h: fired before only from 72 h
        (_oslo(2026, 3, 27, 7, 0), _oslo(2026, 3, 30, 7, 0), True),  # 71 h
        (_oslo(2026, 10, 24, 23, 50), _oslo(2026, 10, 28, 0, 10), False),  # 73 h 20 min, 4 days
        (_oslo(2026, 10, 25, 0, 10), _oslo(2026, 10, 28, 23, 50), True),  # 96 h 40 min, 3 days
        (_oslo(2026, 3, 25, 23, 50), _oslo(2026, 3, 29, 0, 10), False),  # 71 h 20 min, 4 days
    ],
)
def test_hf1_window_is_three_local_days_across_midnight_and_summer_time(
    first: datetime, last: datetime, fires: bool
) -> None:
    """The reference is any reading of the local day three days before, not of the 72 hours: the
    tolerance is the whole reference day, in Europe/Oslo time on summer-time change days too."""
    p = Patient(plan(Condition.HEART_FAILURE))
    p.feed(Metric.BODY_WEIGHT, 80.0, first)
    events = p.feed(Metric.BODY_WEIGHT, 82.5, last)
    assert ("HF-1" in _gain_rules(events)) is fires


def test_hf1_compares_with_the_lowest_reading_of_the_reference_day() -> None:
    """With several weighings on the reference day, its lowest is the day's weight (the morning
    weight before food and drink), whichever order or hour they came in."""
    p = Patient(plan(Condition.HEART_FAILURE))
    p.feed(Metric.BODY_WEIGHT, 80.9, _oslo(2026, 12, 1, 7, 0))
    p.feed(Metric.BODY_WEIGHT, 80.0, _oslo(2026, 12, 1, 21, 0))
    p.feed(Metric.BODY_WEIGHT, 81.2, _oslo(2026, 12, 1, 22, 0))
    (event,) = p.feed(Metric.BODY_WEIGHT, 82.1, _oslo(2026, 12, 4, 7, 0))
    assert event.rule_id == "HF-1"
    assert event.baseline is not None
    assert (event.baseline.value, event.baseline.readings) == (80.0, 3)
    assert event.baseline.method == "lowest_on_day_3d_before"


def test_hf1_at_exactly_2_kg_over_the_days_lowest_does_not_fire() -> None:
    """Trap 2 holds by day: the day's lowest 80.0 and 82.0 three days on is not more than 2 kg."""
    p = Patient(plan(Condition.HEART_FAILURE))
    p.feed(Metric.BODY_WEIGHT, 80.4, _oslo(2026, 12, 1, 7, 0))
    p.feed(Metric.BODY_WEIGHT, 80.0, _oslo(2026, 12, 1, 7, 5))
    assert _gain_rules(p.feed(Metric.BODY_WEIGHT, 82.0, _oslo(2026, 12, 4, 7, 0))) == set()


def test_a_gain_within_one_day_is_not_a_gain_over_days() -> None:
    """Morning 80.0 and evening 82.5 on the same day raise neither HF-1 nor HF-2 (the day's intake)."""
    p = Patient(plan(Condition.HEART_FAILURE, rules_on=["HF-2"]))
    p.feed(Metric.BODY_WEIGHT, 80.0, _oslo(2026, 12, 4, 7, 0))
    assert _gain_rules(p.feed(Metric.BODY_WEIGHT, 82.5, _oslo(2026, 12, 4, 20, 0))) == set()


def test_without_a_weighing_three_days_before_the_earliest_later_day_stands_in() -> None:
    """No weight on the third day before: a gain over two days is still more than 2 kg within three."""
    p = Patient(plan(Condition.HEART_FAILURE))
    p.feed(Metric.BODY_WEIGHT, 80.0, _oslo(2026, 12, 2, 8, 0))
    (event,) = p.feed(Metric.BODY_WEIGHT, 82.1, _oslo(2026, 12, 4, 8, 0))
    assert event.explanation.startswith("Weight 82.1 kg, +2.1 kg since 2 Dec (2 days); rule HF-1")


@pytest.mark.parametrize(
    ("first", "fires"),
    [
        (_oslo(2026, 12, 3, 6, 50), True),  # 24 h 20 min before: yesterday (before: outside 24 h)
        (_oslo(2026, 12, 3, 0, 0), True),  # the first minute of yesterday
        (_oslo(2026, 12, 2, 23, 59), False),  # 23:59 two days before: not "1 day"
    ],
)
def test_hf2_one_day_rule_compares_with_yesterday(first: datetime, fires: bool) -> None:
    """HF-2's 1-day variant (>= 1.36 kg) compares with yesterday's lowest reading, by local day."""
    p = Patient(plan(Condition.HEART_FAILURE, rules_on=["HF-2"]))
    p.feed(Metric.BODY_WEIGHT, 80.0, first)
    events = p.feed(Metric.BODY_WEIGHT, 81.4, _oslo(2026, 12, 4, 7, 10))
    assert ("HF-2" in _gain_rules(events)) is fires
    if fires:
        assert events[0].threshold is not None
        assert (events[0].threshold.op, events[0].threshold.value, events[0].threshold.window) == (
            ">=",
            1.36,
            "1d",
        )


def test_hf1_window_set_in_hours_counts_whole_days() -> None:
    """A plan's HF-1 window of 48 h is two measurement days: a gain from three days before does not
    count, one from two days before does."""
    care = plan(Condition.HEART_FAILURE, thresholds={"HF-1": {"hours": 48.0}})
    p = Patient(care)
    p.feed(Metric.BODY_WEIGHT, 79.0, _oslo(2026, 12, 1, 8, 0))
    p.feed(Metric.BODY_WEIGHT, 80.0, _oslo(2026, 12, 2, 8, 0))
    (event,) = p.feed(Metric.BODY_WEIGHT, 82.1, _oslo(2026, 12, 4, 8, 0))
    assert event.explanation.startswith("Weight 82.1 kg, +2.1 kg since 2 Dec (2 days)")


# ------------------------------------------------------------------ property
_DAYS = st.sampled_from([date(2026, 3, 26), date(2026, 10, 22), date(2026, 12, 1)])  # two span DST
_SERIES = st.lists(
    st.lists(st.integers(min_value=7800, max_value=8400), min_size=1, max_size=3),  # 78.00-84.00 kg
    min_size=2,
    max_size=7,
)


def _fired(start: date, series: list[list[int]], minutes: list[list[int]]) -> dict[tuple[int, int], bool]:
    """Feed the readings in time order; whether HF-1 fired for each (day, index within its day)."""
    readings = []
    for d, (values, mins) in enumerate(zip(series, minutes, strict=True)):
        day = start + timedelta(days=d)
        for i, (v, m) in enumerate(zip(values, mins, strict=True)):
            at = datetime.combine(day, time(m // 60, m % 60), tzinfo=OSLO).timestamp()
            readings.append((at, (d, i), v / 100.0))
    readings.sort()
    history, rules, fired = History(), rule_plan(plan(Condition.HEART_FAILURE)), {}
    for n, (at, key, value) in enumerate(readings):
        point = Point(at, value)
        history.add(Metric.BODY_WEIGHT, point, f"{n:012d}")
        fired[key] = any(f.rule_id == "HF-1" for f in evaluate(Metric.BODY_WEIGHT, point, history, rules))
    return fired


@settings(max_examples=150, deadline=None)
@given(start=_DAYS, series=_SERIES, data=st.data())
def test_shifting_readings_within_their_day_never_changes_whether_hf1_fires(
    start: date, series: list[list[int]], data: st.DataObject
) -> None:
    """Any minute within the same local day, for every reading: HF-1 fires for the same readings."""

    def minutes() -> list[list[int]]:
        def per_day(n: int) -> st.SearchStrategy[list[int]]:
            return st.lists(st.integers(0, 24 * 60 - 1), unique=True, min_size=n, max_size=n)

        return [data.draw(per_day(len(values))) for values in series]

    assert _fired(start, series, minutes()) == _fired(start, series, minutes())
