"""The alert-path age every stage's /health reports, and the status it leads to."""

from __future__ import annotations

import pytest

from runtime.ops import AlertPathAge, health_status


def test_a_consumer_that_is_caught_up_reports_no_age() -> None:
    """Everything up to the end offset done: age 0, however old the last record is."""
    path = AlertPathAge(max_age_s=30, what="reading")
    path.done(0, offset=9, appended=100.0)
    path.ends(0, end=10, now=1000.0)
    assert path.age(1000.0) == 0.0
    assert path.report(1000.0)["delays"] == []


def test_a_backlog_after_a_quiet_spell_counts_from_when_it_was_last_caught_up() -> None:
    """The last record done is an hour old, but the consumer was caught up 5 s ago: about 5 s."""
    path = AlertPathAge(max_age_s=30, what="reading")
    path.done(0, offset=9, appended=0.0)
    path.ends(0, end=10, now=3600.0)
    path.ends(0, end=11, now=3601.0)
    assert path.age(3605.0) == pytest.approx(5.0)


def test_a_backlog_found_at_start_counts_from_the_last_record_done() -> None:
    """Never seen caught up (a backlog from before the start): as old as the last record it finished."""
    path = AlertPathAge(max_age_s=30, what="reading")
    path.ends(0, end=5000, now=100.0)  # nothing done yet: no claim either way
    assert path.age(100.0) == 0.0
    path.done(0, offset=0, appended=40.0)
    path.ends(0, end=5000, now=101.0)
    assert path.age(101.0) == pytest.approx(61.0)


def test_under_a_steady_backlog_the_age_is_that_of_the_last_record_done() -> None:
    """Still behind, and the last record done was appended 40 s ago: 40 s, past a 30 s threshold."""
    path = AlertPathAge(max_age_s=30, what="reading")
    path.done(0, offset=9, appended=0.0)
    path.ends(0, end=500, now=1.0)
    path.done(0, offset=99, appended=60.0)
    path.ends(0, end=900, now=61.0)
    report = path.report(100.0)
    assert report["alert_path_age_s"] == pytest.approx(40.0)
    assert report["delays"]
    assert "40 s" in report["delays"][0]


def test_exactly_at_the_threshold_is_not_yet_degraded() -> None:
    """Degraded means past the threshold: 30 s old with a 30 s threshold is still ok."""
    path = AlertPathAge(max_age_s=30, what="alert event")
    path.taken(0, appended=70.0)
    assert path.report(100.0)["delays"] == []
    assert path.report(100.001)["delays"]


def test_a_batch_taken_and_not_done_ages_from_its_first_record() -> None:
    """A stuck batch (the database hangs) keeps the age of its oldest record growing until done."""
    path = AlertPathAge(max_age_s=30, what="alert event")
    path.taken(1, appended=10.0)
    path.taken(1, appended=12.0)
    assert path.age(50.0) == pytest.approx(40.0)
    path.done(1, offset=5, appended=12.0)
    assert path.age(50.0) == 0.0


def test_partitions_that_moved_away_are_forgotten() -> None:
    """A partition another consumer now holds no longer counts here."""
    path = AlertPathAge(max_age_s=30, what="reading")
    path.taken(3, appended=0.0)
    path.retain({1, 2})
    assert path.age(100.0) == 0.0


@pytest.mark.parametrize(
    ("report", "status"),
    [
        ({"ok": True}, "ok"),
        ({"ok": True, "delays": []}, "ok"),
        ({"ok": True, "delays": ["late"]}, "degraded"),
        ({"ok": False, "delays": ["late"]}, "down"),
        ({}, "down"),
    ],
)
def test_health_status_is_down_then_degraded_then_ok(report: dict[str, object], status: str) -> None:
    """Not ok wins over late; late with ok is degraded."""
    assert health_status(report) == status


def test_lag_counts_the_records_beyond_the_last_one_done_on_each_partition() -> None:
    """The lag gauge: end offset minus the next offset to do, summed; 0 when caught up, and a
    partition not yet done or not yet looked at (or gone to another consumer) counts nothing."""
    path = AlertPathAge(max_age_s=30, what="reading")
    path.done(0, offset=9, appended=1.0)
    path.ends(0, end=10, now=2.0)
    assert path.lag() == 0
    path.ends(0, end=110, now=3.0)
    path.done(1, offset=4, appended=1.0)
    path.ends(1, end=15, now=3.0)
    path.ends(2, end=5000, now=3.0)  # nothing done there yet
    path.done(3, offset=7, appended=1.0)  # its end not seen yet
    assert path.lag() == 100 + 10
    path.retain({1})
    assert path.lag() == 10
