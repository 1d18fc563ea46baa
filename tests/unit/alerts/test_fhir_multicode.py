"""Reviewer's reproducers for 23cdf1a (each failed on it). A multi-code Observation search read
2 * wanted Observations' worth of readings of the asked-for metrics, then dropped the Observations
whose code was not asked for: readings that built dropped Observations (cuffs asked for by their
components' codes, mmol/L glucose asked for as 2339-0) used up the read, later matches were lost and
no next link said so."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.requests import Request

from alerts.console import fhir_api
from alerts.fhir import source
from streams.archive import read as archive_read

T0 = datetime(2026, 3, 1, tzinfo=UTC)
_n = iter(range(1, 10**6))


def _r(metric: str, at: datetime, value: float, unit: str, device: str = "cuff-1") -> archive_read.Reading:
    return archive_read.Reading(
        measurement_id=f"{next(_n):032x}", metric=metric, measured_at=at, value=value, unit=unit,
        reported_value=value, reported_unit=unit, flag=None, loinc="", device_id=device, kit_id="K1",
        received_at=at,
    )  # fmt: skip


def _install(monkeypatch: pytest.MonkeyPatch, stored: list[archive_read.Reading]) -> None:
    """archive_read.series over `stored`, with the SQL's filter, order and LIMIT."""

    def series(conn, pid, start, end, *, metric=None, metrics=None, limit=50_000):
        want = {metric} if metric is not None else (None if metrics is None else set(metrics))
        rows = [r for r in stored if (want is None or r.metric in want) and start <= r.measured_at < end]
        return sorted(rows, key=lambda r: (r.measured_at, r.metric))[: min(limit, 50_000)]

    monkeypatch.setattr(archive_read, "series", series)
    monkeypatch.setattr(source, "find_patient", lambda conn, pid, team: object())


def _search(query: str) -> dict[str, Any]:
    scope = {"type": "http", "method": "GET", "scheme": "https", "server": ("c", 443),
             "path": "/fhir/Observation", "query_string": query.encode(),
             "headers": [(b"host", b"c")]}  # fmt: skip
    conn = SimpleNamespace(rollback=lambda: None)
    ctx = SimpleNamespace(db=lambda: contextlib.nullcontext(conn), audit=lambda *a, **k: None)
    who = SimpleNamespace(team_id="t", username="nurse")
    return json.loads(fhir_api.search_observations(Request(scope), ctx, who).body)  # type: ignore[arg-type]


def _codes(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["code"]["coding"][0]["code"] for e in bundle["entry"]]


def test_pulse_after_many_cuff_readings_is_found_by_a_multi_code_search(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stored = []
    for i in range(10):  # ten cuff measurements, then one pulse
        at = T0 + timedelta(minutes=i)
        stored += [_r("bp_systolic", at, 120, "mm[Hg]"), _r("bp_diastolic", at, 80, "mm[Hg]")]
    stored.append(_r("pulse", T0 + timedelta(hours=1), 70, "/min", device="oxi"))
    _install(monkeypatch, stored)
    # Followed page by page: every cuff (its panel, asked for by its components' codes) and then
    # the pulse, each once; the last page has no next link.
    codes: list[str] = []
    for offset in range(0, 20, 2):
        found = _search(f"patient=P1&code=8480-6,8462-4,8867-4&_count=2&_offset={offset}")
        codes += _codes(found)
        if not any(link["relation"] == "next" for link in found["link"]):
            break
    assert codes == ["85354-9"] * 10 + ["8867-4"]


def test_a_paired_diastolic_is_not_served_as_a_lone_observation(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = []
    for i in range(10):
        at = T0 + timedelta(minutes=i)
        stored += [_r("bp_systolic", at, 120, "mm[Hg]"), _r("bp_diastolic", at, 80, "mm[Hg]")]
    _install(monkeypatch, stored)
    for query in (
        "code=8480-6,8462-4,8867-4&_count=2",
        "code=8462-4&_count=3",
        "code=8480-6,8867-4&_count=4",
    ):
        found = _search(f"patient=P1&{query}")
        # every diastolic here has its systolic partner: each cuff is its panel, asked for by a
        # component's code too, and the next link says more follow
        assert _codes(found) == ["85354-9"] * int(query[-1]), (query, _codes(found))
        assert any(link["relation"] == "next" for link in found["link"]), query


def test_mg_dl_glucose_after_many_mmol_readings_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    stored = [_r("glucose", T0 + timedelta(minutes=i), 6.0, "mmol/L", device="m1") for i in range(10)]
    stored.append(_r("glucose", T0 + timedelta(hours=1), 108.0, "mg/dL", device="m2"))
    stored.append(_r("pulse", T0 + timedelta(hours=2), 70, "/min", device="oxi"))
    _install(monkeypatch, stored)
    found = _search("patient=P1&code=2339-0,8867-4&_count=1")
    codes = _codes(found)
    assert codes == ["2339-0"], f"the mg/dL reading is missing: {codes}"
    assert any(link["relation"] == "next" for link in found["link"]), "the pulse follows"
