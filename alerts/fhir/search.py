"""The FHIR search parameters the API takes, parsed and checked; pure (no database, no HTTP).

Each parser takes the query as (name, value) pairs and returns a frozen query object, or raises
`SearchError` with what is wrong and what to send instead (the API answers 400 with it in an
OperationOutcome). Unknown parameters are refused rather than ignored: a client that believes a
filter applied when it did not would show the wrong rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from contracts import BP_PANEL_LOINC, METRICS, Metric

__all__ = [
    "DEFAULT_COUNT",
    "MAX_COUNT",
    "MAX_OFFSET",
    "FlagQuery",
    "ObservationQuery",
    "PatientQuery",
    "PatientScoped",
    "SearchError",
    "matches",
    "parse_flag",
    "parse_nothing",
    "parse_observation",
    "parse_patient",
    "parse_patient_scoped",
]

DEFAULT_COUNT = 50
MAX_COUNT = 500
MAX_OFFSET = 10_000
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)  # before any kit measured; the open start of a window
_LATEST_SPAN = timedelta(days=2)  # the open end: a little past now (a device clock runs ahead)
_COMMON = {"_count", "_offset", "_format"}
_FORMATS = {"json", "application/json", "application/fhir+json"}
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")  # the pseudonym's own rule (migration 0006)
_DATE = re.compile(
    r"^(?P<prefix>eq|ge|gt|le|lt)?(?P<value>\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?)$"
)
LOINC = "http://loinc.org"


class SearchError(ValueError):
    """A search parameter the API cannot honour; the message says what to send instead."""


@dataclass(frozen=True, slots=True)
class Page:
    count: int
    offset: int


@dataclass(frozen=True, slots=True)
class PatientQuery:
    page: Page
    patient_id: str | None  # _id or identifier; None: every patient the caller may see


@dataclass(frozen=True, slots=True)
class ObservationQuery:
    page: Page
    patient_id: str
    codes: frozenset[str] | None  # LOINC codes of Observation.code; None: every code
    metrics: frozenset[Metric] | None  # the stored metrics those codes come from
    start: datetime  # effective time window [start, end)
    end: datetime


@dataclass(frozen=True, slots=True)
class FlagQuery:
    page: Page
    patient_id: str | None
    active: bool | None  # status=active / inactive; None: both


def _single(params: list[tuple[str, str]], allowed: set[str], repeatable: set[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in params:
        if name not in allowed | _COMMON:
            raise SearchError(
                f"unknown search parameter {name!r}: this server takes {', '.join(sorted(allowed | _COMMON))}"
            )
        found.setdefault(name, []).append(value)
    for name, values in found.items():
        if len(values) > 1 and name not in repeatable:
            raise SearchError(f"{name} given {len(values)} times: give it once")
    if "_format" in found and found["_format"][0] not in _FORMATS:
        raise SearchError("_format: this server answers JSON only (application/fhir+json)")
    return found


def _int(name: str, raw: str, low: int, high: int) -> int:
    if not raw.isascii() or not raw.isdigit() or len(raw) > 9:
        raise SearchError(f"{name} must be a whole number from {low} to {high}, not {raw[:40]!r}")
    value = int(raw)
    if not low <= value <= high:
        raise SearchError(f"{name} must be from {low} to {high}; {value} is outside")
    return value


def _page(found: dict[str, list[str]]) -> Page:
    count = _int("_count", found["_count"][0], 1, MAX_COUNT) if "_count" in found else DEFAULT_COUNT
    offset = _int("_offset", found["_offset"][0], 0, MAX_OFFSET) if "_offset" in found else 0
    return Page(count, offset)


def _patient_ref(raw: str) -> str:
    value = raw.removeprefix("Patient/")
    if not _ID.fullmatch(value):
        raise SearchError(f"patient must be Patient/<pseudonym> or the pseudonym, not {raw[:80]!r}")
    return value


def parse_patient(params: Iterable[tuple[str, str]]) -> PatientQuery:
    found = _single(list(params), {"_id", "identifier"}, set())
    wanted = None
    if "_id" in found:
        wanted = _patient_ref(found["_id"][0])
    if "identifier" in found:
        system, bar, value = found["identifier"][0].rpartition("|")
        if bar and system not in {"", "urn:vaktrom:patient"}:
            raise SearchError("identifier: this server finds patients by urn:vaktrom:patient|<pseudonym>")
        by_identifier = _patient_ref(value)
        if wanted is not None and wanted != by_identifier:
            raise SearchError("_id and identifier name different patients: give one")
        wanted = by_identifier
    return PatientQuery(_page(found), wanted)


def _loinc_codes() -> dict[str, frozenset[Metric]]:
    """Each LOINC code an Observation.code can carry, with the stored metrics it comes from."""
    codes: dict[str, set[Metric]] = {}
    for metric, spec in METRICS.items():
        codes.setdefault(spec.loinc, set()).add(metric)
    codes.setdefault("2708-6", set()).add(Metric.SPO2)  # the oxygen-saturation profile's second code
    codes.setdefault("2339-0", set()).add(Metric.GLUCOSE)  # glucose reported in mg/dL
    codes[BP_PANEL_LOINC] = {Metric.BP_SYSTOLIC, Metric.BP_DIASTOLIC}
    return {code: frozenset(ms) for code, ms in codes.items()}


CODES = _loinc_codes()
_CUFF = frozenset({Metric.BP_SYSTOLIC, Metric.BP_DIASTOLIC})


def matches(observation: dict[str, Any], codes: frozenset[str]) -> bool:
    """Whether the Observation's code, or a component's (a blood-pressure panel's 8480-6 and
    8462-4), is one of `codes`."""
    parts = [observation["code"], *(c["code"] for c in observation.get("component", ()))]
    return any(coding.get("code") in codes for part in parts for coding in part.get("coding", ()))


def _codes(raw: str) -> frozenset[str]:
    codes = set()
    for token in raw.split(","):
        system, bar, code = token.strip().rpartition("|")
        if bar and system not in {"", LOINC}:
            raise SearchError(f"code: only LOINC ({LOINC}|<code>) is known here, not {system[:80]!r}")
        if code not in CODES:
            raise SearchError(
                f"code {code[:40]!r} is not a LOINC code this server stores: {', '.join(sorted(CODES))}"
            )
        codes.add(code)
    return frozenset(codes)


def _moment(value: str) -> tuple[datetime, datetime]:
    """The [start, end) a FHIR date or dateTime of any precision covers; a time needs a zone."""
    if len(value) == 4:
        year = int(value)
        return datetime(year, 1, 1, tzinfo=UTC), datetime(year + 1, 1, 1, tzinfo=UTC)
    if len(value) == 7:
        year, month = int(value[:4]), int(value[5:7])
        if not 1 <= month <= 12:
            raise ValueError(f"month {month}")
        start = datetime(year, month, 1, tzinfo=UTC)
        return start, datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    if len(value) == 10:
        start = datetime.fromisoformat(value).replace(tzinfo=UTC)
        return start, start + timedelta(days=1)
    if not (value.endswith("Z") or value[-6] in "+-"):
        raise SearchError(f"date {value!r}: a time needs a zone (Z or +01:00)")
    start = datetime.fromisoformat(value.replace("Z", "+00:00"))
    clock = value[11:].removesuffix("Z")[:-6] if value[-6] in "+-" else value[11:].removesuffix("Z")
    precision = timedelta(microseconds=1) if "." in clock else timedelta(seconds=1)
    if clock.count(":") == 1:  # hh:mm, the zone's own colon not counted
        precision = timedelta(minutes=1)
    return start, start + precision


def _window(values: list[str]) -> tuple[datetime, datetime]:
    start, end = EARLIEST, datetime.now(UTC) + _LATEST_SPAN
    for raw in values:
        match = _DATE.fullmatch(raw)
        if match is None:
            raise SearchError(
                f"date {raw[:60]!r}: write a prefix (ge, gt, le, lt) and a date or time, e.g. "
                "ge2026-03-01 or le2026-03-05T12:00:00Z"
            )
        try:
            low, high = _moment(match["value"])
        except (ValueError, OverflowError) as exc:
            raise SearchError(f"date {raw[:60]!r} is not a real date or time ({exc})") from None
        prefix = match["prefix"] or "eq"
        if prefix in {"eq", "ge"}:
            start = max(start, low)
        if prefix == "gt":
            start = max(start, high)
        if prefix in {"eq", "le"}:
            end = min(end, high)
        if prefix == "lt":
            end = min(end, low)
    return start, end


def parse_observation(params: Iterable[tuple[str, str]]) -> ObservationQuery:
    found = _single(list(params), {"patient", "subject", "code", "date"}, {"date"})
    refs = found.get("patient", []) + found.get("subject", [])
    if len(refs) != 1:
        raise SearchError("Observation search needs one patient: ?patient=Patient/<pseudonym>")
    codes = _codes(found["code"][0]) if "code" in found else None
    metrics = frozenset(m for c in codes for m in CODES[c]) if codes is not None else None
    if metrics is not None and metrics & _CUFF:  # a cuff's two pressures are one Observation, its panel
        metrics |= _CUFF
    start, end = _window(found.get("date", []))
    return ObservationQuery(_page(found), _patient_ref(refs[0]), codes, metrics, start, end)


def parse_flag(params: Iterable[tuple[str, str]]) -> FlagQuery:
    found = _single(list(params), {"patient", "subject", "status"}, set())
    refs = found.get("patient", []) + found.get("subject", [])
    if len(refs) > 1:
        raise SearchError("give one patient (patient or subject, not both)")
    active = None
    if "status" in found:
        status = found["status"][0]
        if status not in {"active", "inactive"}:
            raise SearchError("status must be active or inactive")
        active = status == "active"
    return FlagQuery(_page(found), _patient_ref(refs[0]) if refs else None, active)


@dataclass(frozen=True, slots=True)
class PatientScoped:
    page: Page
    patient_id: str


def parse_patient_scoped(params: Iterable[tuple[str, str]]) -> PatientScoped:
    """A search by one patient and nothing else (Device, QuestionnaireResponse)."""
    found = _single(list(params), {"patient", "subject"}, set())
    refs = found.get("patient", []) + found.get("subject", [])
    if len(refs) != 1:
        raise SearchError("this search needs one patient: ?patient=Patient/<pseudonym>")
    return PatientScoped(_page(found), _patient_ref(refs[0]))


def parse_nothing(params: Iterable[tuple[str, str]]) -> Page:
    """A search that takes no parameters of its own (Questionnaire: there are few)."""
    return _page(_single(list(params), set(), set()))
