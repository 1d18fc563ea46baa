"""The FHIR API's search parameters (alerts/fhir/search.py): what each parses to, the exact edges
of the date prefixes and the paging limits, and that any text gives a query or a SearchError."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.fhir.search import (
    MAX_COUNT,
    MAX_OFFSET,
    SearchError,
    parse_flag,
    parse_observation,
    parse_patient,
    parse_patient_scoped,
)
from contracts import Metric

P = ("patient", "Patient/P-ABC")


def test_date_prefixes_bound_the_window_at_the_exact_instant() -> None:
    """ge is inclusive, gt starts after the value's precision, le includes its whole precision, lt
    ends before it; a date alone is a UTC day."""
    q = parse_observation([P, ("date", "ge2026-03-01T10:00:00Z"), ("date", "le2026-03-02")])
    assert q.start == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert q.end == datetime(2026, 3, 3, tzinfo=UTC)
    q = parse_observation([P, ("date", "gt2026-03-01T10:00:00Z"), ("date", "lt2026-03-02")])
    assert q.start == datetime(2026, 3, 1, 10, 0, 1, tzinfo=UTC)
    assert q.end == datetime(2026, 3, 2, tzinfo=UTC)
    q = parse_observation([P, ("date", "2026-03")])
    assert (q.start, q.end) == (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
    q = parse_observation([P, ("date", "2024-12")])
    assert q.end == datetime(2025, 1, 1, tzinfo=UTC)
    q = parse_observation([P, ("date", "ge2026-03-01T10:00:00+01:00")])
    assert q.start == datetime(2026, 3, 1, 9, tzinfo=UTC)
    assert parse_observation([P]).end > datetime.now(UTC) + timedelta(days=1)


@pytest.mark.parametrize(
    "bad",
    ["ge2026-02-30", "2026-13", "ge2026-03-01T10:00:00", "tomorrow", "ne2026-03-01", "ge99999", "", "ge"],
)
def test_bad_dates_are_refused(bad: str) -> None:
    """An impossible date, a time without a zone, an unknown prefix: SearchError, not a crash."""
    with pytest.raises(SearchError):
        parse_observation([P, ("date", bad)])


def test_count_and_offset_limits_are_exact() -> None:
    """_count 1..MAX_COUNT and _offset 0..MAX_OFFSET pass; one past either is refused."""
    assert parse_patient([("_count", str(MAX_COUNT)), ("_offset", str(MAX_OFFSET))]).page.count == MAX_COUNT
    for name, value in [("_count", "0"), ("_count", str(MAX_COUNT + 1)), ("_offset", str(MAX_OFFSET + 1)),
                        ("_count", "-1"), ("_count", "1e3"), ("_count", "١٢")]:  # fmt: skip
        with pytest.raises(SearchError):
            parse_patient([(name, value)])


def test_codes_map_to_the_stored_metrics() -> None:
    """LOINC codes with or without the system pick their metrics; the BP panel both pressures."""
    q = parse_observation([P, ("code", "http://loinc.org|29463-7,85354-9")])
    assert q.codes == {"29463-7", "85354-9"}
    assert q.metrics == {Metric.BODY_WEIGHT, Metric.BP_SYSTOLIC, Metric.BP_DIASTOLIC}
    with pytest.raises(SearchError):
        parse_observation([P, ("code", "http://snomed.info/sct|29463-7")])


def test_unknown_repeated_and_missing_parameters_are_refused() -> None:
    """Unknown parameters, a repeated single one and a missing patient are refused, not ignored."""
    for params in ([P, ("sort", "date")], [P, P], [], [("subject", "P-A"), P]):
        with pytest.raises(SearchError):
            parse_observation(params)
    with pytest.raises(SearchError):
        parse_flag([("status", "maybe")])
    with pytest.raises(SearchError):
        parse_patient_scoped([])
    assert parse_flag([("status", "inactive")]).active is False


@given(st.lists(st.tuples(st.sampled_from(["patient", "date", "code", "_count", "_offset", "x"]), st.text())))
def test_any_parameters_give_a_query_or_a_search_error(params: list[tuple[str, str]]) -> None:
    """Whatever a client sends, the parser answers with a query or a SearchError (a 400), never
    another exception (a 500)."""
    with contextlib.suppress(SearchError):
        parse_observation(params)
