"""Deterministic ids: every copy of a reading gets the same id; any real difference changes it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from contracts import episode_id, format_instant, measurement_id, rejection_id

OSLO_WINTER = timezone(timedelta(hours=1))
BASE = {
    "device_id": "SC-445",
    "patient_id": "P-7f3a",
    "metric": "body_weight",
    "reported_value": 82.3,
    "reported_unit": "kg",
    "flag": None,
    "measured_at": datetime(2026, 11, 22, 7, 31, tzinfo=OSLO_WINTER),
}


def test_same_reading_same_id() -> None:
    """A resend computes the same id; the same instant in another offset is the same reading."""
    again = {**BASE, "measured_at": datetime(2026, 11, 22, 6, 31, tzinfo=UTC), "reported_value": 82.30}
    assert measurement_id(**BASE) == measurement_id(**again)
    assert len(measurement_id(**BASE)) == 32
    assert int(measurement_id(**BASE), 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"device_id": "SC-446"},
        {"patient_id": "P-7f3b"},
        {"metric": "pulse"},
        {"reported_value": 82.4},
        {"reported_value": 82.300001},
        {"reported_unit": "[lb_av]"},
        {"flag": "HI"},
        {"measured_at": datetime(2026, 11, 22, 7, 31, 0, 1000, tzinfo=OSLO_WINTER)},
    ],
)
def test_any_real_difference_changes_the_id(change: dict[str, object]) -> None:
    assert measurement_id(**{**BASE, **change}) != measurement_id(**BASE)  # type: ignore[arg-type]


def test_sub_millisecond_jitter_does_not_change_the_id() -> None:
    """Ids use millisecond precision, the finest a kit clock can be trusted to."""
    jitter = {**BASE, "measured_at": datetime(2026, 11, 22, 7, 31, 0, 999, tzinfo=OSLO_WINTER)}
    assert measurement_id(**jitter) == measurement_id(**BASE)  # type: ignore[arg-type]


def test_flag_without_value_differs_from_value() -> None:
    hi = {**BASE, "metric": "glucose", "reported_value": None, "reported_unit": "mmol/L", "flag": "HI"}
    assert measurement_id(**hi) != measurement_id(**{**hi, "flag": "LO"})  # type: ignore[arg-type]


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="time zone"):
        measurement_id(**{**BASE, "measured_at": datetime(2026, 11, 22, 7, 31)})  # noqa: DTZ001


def test_format_instant_is_utc_with_milliseconds() -> None:
    assert (
        format_instant(datetime(2026, 11, 22, 7, 31, 5, 123456, tzinfo=OSLO_WINTER))
        == "2026-11-22T06:31:05.123Z"
    )


def test_the_recipe_is_the_documented_one() -> None:
    """Non-Python clients may compute ids; this pins the recipe written in contracts/_ids.py."""
    import hashlib  # noqa: PLC0415

    text = "m1|SC-445|P-7f3a|body_weight|82.300000|kg||2026-11-22T06:31:00.000Z"
    assert measurement_id(**BASE) == hashlib.sha256(text.encode()).hexdigest()[:32]  # type: ignore[arg-type]


def test_rejection_and_episode_ids_are_deterministic_and_distinct() -> None:
    first = rejection_id(source_topic="t", payload=b"{bad", index=None)
    assert first == rejection_id(source_topic="t", payload=b"{bad", index=None)
    assert first != rejection_id(source_topic="t", payload=b"{bad", index=0)
    assert first != rejection_id(source_topic="t", payload=b"{bad!", index=None)
    opened = episode_id(patient_id="P-1", rule_id="HF-1", opened_by="a" * 32)
    assert opened == episode_id(patient_id="P-1", rule_id="HF-1", opened_by="a" * 32)
    assert opened != episode_id(patient_id="P-1", rule_id="HF-2", opened_by="a" * 32)
