"""When the simulator's kits stamp their own status messages (online, offline)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway_sim.cli import status_time


def test_a_run_of_a_past_period_says_goodbye_at_its_end() -> None:
    """A fortnight that ended in the past: the kits' "offline" is stamped at its end, not today
    (today would move the monitor's stream clock months past the readings)."""
    end = datetime(2026, 11, 16, 6, 0, tzinfo=UTC)
    assert status_time(end) == end


def test_a_run_up_to_now_or_into_the_future_stamps_now() -> None:
    """Without an end, or with one still ahead (--follow), a status message carries the time it is sent."""
    before = datetime.now(UTC)
    for end in (None, before + timedelta(days=3)):
        stamped = status_time(end)
        assert before <= stamped <= datetime.now(UTC)
