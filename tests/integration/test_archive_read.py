"""The archive's read API on the real database, and the FHIR export read back by the real bridge."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from contracts import Metric, topics
from streams.archive import read
from streams.archive.fhir import bundle_json, export_patient
from tests.conftest import Stack
from tests.integration.archive_support import ArchiveProcess, store_rows
from tests.integration.bridge_support import (
    BridgeProcess,
    consume,
    enrol_kit,
    kit_message,
    kit_reading,
    publish,
    reading_topic,
)
from tests.support.records import make_measurement, make_rejection

T0 = datetime(2026, 10, 1, 6, 0, tzinfo=UTC)


def test_latest_series_buckets_and_rejections(stack: Stack, unique: str) -> None:
    patient, kit = f"{unique[:40]}P", f"{unique[:20]}K"
    weights = [(T0 + timedelta(hours=h), 80.0 + h / 10) for h in (0, 1, 1.5, 25, 49)]  # 3 days
    sent = [make_measurement(patient=patient, kit=kit, metric=Metric.BODY_WEIGHT, reported=v, at=at)[2]
            for at, v in weights]  # fmt: skip
    sent.append(make_measurement(patient=patient, kit=kit, metric=Metric.SPO2, reported=94.0, at=T0)[2])
    flag = make_measurement(
        patient=patient, kit=kit, metric=Metric.GLUCOSE, reported=None, unit="mmol/L", flag="HI", at=T0
    )[2]
    sent.append(flag)
    other = make_measurement(patient=f"{patient}X", kit=kit, metric=Metric.BODY_WEIGHT, reported=99.0)[2]
    rejection = make_rejection(kit, 0, patient=patient)[2]
    store_rows(stack, [*sent, other], [rejection])
    with psycopg.connect(stack.database_url) as conn:
        latest = read.latest(conn, patient)
        assert set(latest) == {"body_weight", "spo2", "glucose"}
        assert latest["body_weight"].reported_value == 84.9
        assert latest["body_weight"].measured_at == T0 + timedelta(hours=49)
        assert latest["glucose"].flag == "HI"
        assert latest["glucose"].value is None

        window = read.series(conn, patient, T0, T0 + timedelta(hours=25), metric="body_weight")
        assert [r.reported_value for r in window] == [80.0, 80.1, 80.15], "half-open window: 25 h excluded"
        everything = read.series(conn, patient, T0, T0 + timedelta(days=3))
        assert len(everything) == len(sent), "every metric, and nothing of the other patient"

        end = T0 + timedelta(days=3)
        hourly = read.buckets(conn, patient, "body_weight", T0 + timedelta(minutes=30), end)
        assert [(b.start, b.readings) for b in hourly] == [
            (T0, 1), (T0 + timedelta(hours=1), 2), (T0 + timedelta(hours=25), 1),
            (T0 + timedelta(hours=49), 1),
        ], "the start is floored to the hour, so the 06:00 reading is in"  # fmt: skip
        second = hourly[1]
        assert (second.min, second.max, second.last) == (80.1, 80.15, 80.15)
        assert second.mean == pytest.approx(80.125)
        daily = read.buckets(conn, patient, "body_weight", T0, end, width="day")
        assert [b.readings for b in daily] == [3, 1, 1]
        assert daily[0].start == datetime(2026, 10, 1, tzinfo=UTC)
        glucose = read.buckets(conn, patient, "glucose", T0, T0 + timedelta(days=1), width="day")
        assert [(g.readings, g.min, g.last) for g in glucose] == [(1, None, None)], (
            "a HI counts, has no value"
        )

        refused = read.rejections(conn, patient, T0, T0 + timedelta(days=60))
        assert [(r.reason, r.metric) for r in refused] == [("implausible", "spo2")]

        with pytest.raises(ValueError, match="the window is empty"):
            read.series(conn, patient, T0, T0)
        with pytest.raises(ValueError, match="'nonsense' is not a valid Metric"):
            read.series(conn, patient, T0, T0 + timedelta(days=1), metric="nonsense")
        with pytest.raises(ValueError, match="time zone"):
            read.series(conn, patient, datetime(2026, 1, 1), T0)  # noqa: DTZ001


def test_the_fhir_export_round_trips_through_the_real_bridge(
    bridge: BridgeProcess, archive: ArchiveProcess, stack: Stack
) -> None:
    """kit -> bridge -> archive -> FHIR Bundle -> the bridge's FHIR input -> the same measurements."""
    kit, patient, oximeter = enrol_kit(stack, bridge.name)
    bridge.start()
    archive.start()
    now = datetime.now(UTC).replace(microsecond=0)
    readings = [
        kit_reading(oximeter, "spo2", 93.0, "%", ago=timedelta(minutes=30)),
        kit_reading(oximeter, "pulse", 104.0, "/min", ago=timedelta(minutes=29)),
        kit_reading(f"{kit}-GM", "glucose", 70.0, "mg/dL", ago=timedelta(minutes=20)),
        kit_reading(f"{kit}-GM", "glucose", None, "mmol/L", ago=timedelta(minutes=10), flag="LO"),
    ]
    publish(stack, reading_topic(bridge, kit), kit_message(kit, 1, *readings))
    first = [value for _k, value, _h in consume(stack, topics.measurement_topic(bridge.prefix), until=4)]
    assert len(first) == 4, bridge.tail()
    archive.wait_stored(stack, kit, 4)

    with psycopg.connect(stack.database_url) as conn:
        bundle = export_patient(conn, patient, now - timedelta(hours=1), now + timedelta(minutes=1))
    assert len(bundle.entry) == 4
    publish(stack, reading_topic(bridge, kit, "fhir"), bundle_json(bundle))
    records = consume(stack, topics.measurement_topic(bridge.prefix), until=8)
    again = [value for _k, value, _h in records][4:]
    assert len(again) == 4, bridge.tail()
    fields = ("measurement_id", "patient_id", "metric", "value", "unit", "reported_value", "reported_unit",
              "flag", "measured_at", "device_id", "loinc")  # fmt: skip
    by_id = {m["measurement_id"]: m for m in first}
    for m in again:
        original = by_id[m["measurement_id"]]
        assert {f: m[f] for f in fields} == {f: original[f] for f in fields}
    assert json.loads(bundle_json(bundle))["entry"][0]["resource"]["resourceType"] == "Observation"
