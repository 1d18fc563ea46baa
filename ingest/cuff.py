"""A blood-pressure cuff reading: the checks of the whole panel and its component readings.

Pure: no I/O. A cuff sends one `KitReading` with metric `blood_pressure`, its pressures in
`systolic`/`diastolic` and, when it measured one, `pulse`. The checks that need all of them at once
live here (they come first, before the per-component checks of the normaliser):

    unit_not_accepted (not mm[Hg]) -> flag_not_accepted -> inconsistent (a `value` instead of the
    pressures) -> missing_value (a pressure missing) -> implausible (not a finite number)
    -> inconsistent (diastolic not below systolic)

Then each component (bp_systolic, bp_diastolic, pulse) is an ordinary reading with the cuff's
device and measured time, checked like any other (plausibility, device, clock, attribution); the
first that fails rejects the whole cuff reading, so a panel is stored whole or not at all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import msgspec

from contracts import (
    BLOOD_PRESSURE,
    MAX_RAW_EXCERPT_BYTES,
    KitReading,
    Measurement,
    Metric,
    Rejection,
    RejectReason,
    canonical_unit_code,
    panel_id,
)
from ingest.text import printable, printable_bytes

__all__ = [
    "BLOOD_PRESSURE",
    "CuffProblem",
    "cuff_components",
    "cuff_panel",
    "cuff_problem",
    "stray_cuff_fields",
]

_MM_HG = "mm[Hg]"


class CuffProblem(NamedTuple):
    reason: RejectReason
    detail: str


def _fmt(value: float) -> str:
    return f"{value:g}"


def cuff_problem(reading: KitReading) -> CuffProblem | None:  # noqa: PLR0911 (one return per check)
    """Why this cuff reading cannot be stored as a blood-pressure panel, or None when it can."""
    if canonical_unit_code(reading.unit) != _MM_HG:
        return CuffProblem(
            RejectReason.UNIT_NOT_ACCEPTED,
            f"unit {reading.unit!r} is not accepted for blood_pressure; send mm[Hg] (or mmHg)",
        )
    if reading.flag is not None:
        return CuffProblem(
            RejectReason.FLAG_NOT_ACCEPTED,
            f"a {reading.flag} flag is meaningful only for glucose meters, not for blood_pressure",
        )
    if reading.value is not None:
        return CuffProblem(
            RejectReason.INCONSISTENT,
            "a blood_pressure reading carries systolic and diastolic (and pulse), not value",
        )
    systolic, diastolic = reading.systolic, reading.diastolic
    if systolic is None or diastolic is None:
        missing = " and ".join(n for n, v in (("systolic", systolic), ("diastolic", diastolic)) if v is None)
        return CuffProblem(RejectReason.MISSING_VALUE, f"the blood_pressure reading has no {missing}")
    for name, number in (("systolic", systolic), ("diastolic", diastolic), ("pulse", reading.pulse)):
        if number is not None and not math.isfinite(number):
            return CuffProblem(
                RejectReason.IMPLAUSIBLE,
                f"{name} {number} is not a finite number; a data-quality problem, not a clinical value",
            )
    if not diastolic < systolic:
        return CuffProblem(
            RejectReason.INCONSISTENT,
            f"diastolic {_fmt(diastolic)} is not below systolic {_fmt(systolic)} mm[Hg]; the cuff "
            "measured wrongly or the two were swapped (not stored, not converted)",
        )
    return None


def cuff_components(reading: KitReading) -> list[KitReading]:
    """The component readings of a cuff reading that passed `cuff_problem`: systolic, diastolic,
    then the pulse when the cuff sent one, each with the cuff's device and measured time."""
    assert reading.systolic is not None  # checked by `cuff_problem`
    assert reading.diastolic is not None
    parts = [
        (Metric.BP_SYSTOLIC, reading.systolic, _MM_HG),
        (Metric.BP_DIASTOLIC, reading.diastolic, _MM_HG),
    ]
    if reading.pulse is not None:
        parts.append((Metric.PULSE, reading.pulse, "/min"))
    return [
        KitReading(
            device=reading.device,
            metric=metric.value,
            value=value,
            unit=unit,
            measured_at=reading.measured_at,
        )
        for metric, value, unit in parts
    ]


def cuff_panel(
    reading: KitReading,
    *,
    component: Callable[[KitReading], Measurement | Rejection],
    refuse: Callable[[CuffProblem], Rejection],
) -> list[Measurement] | Rejection:
    """The cuff reading's component measurements, sharing its panel id; or one rejection: `refuse`
    for a problem of the whole panel, else the first component's own (checked by `component`,
    the normaliser's per-reading checks), naming the component and carrying the whole reading."""
    problem = cuff_problem(reading)
    if problem is not None:
        return refuse(problem)
    parts: list[Measurement] = []
    for part in cuff_components(reading):
        record = component(part)
        if isinstance(record, Rejection):  # the panel is stored whole or not at all
            return msgspec.structs.replace(
                record,
                detail=printable(f"blood_pressure {part.metric}: {record.detail}", max_bytes=1024),
                raw_excerpt=printable_bytes(msgspec.json.encode(reading), max_bytes=MAX_RAW_EXCERPT_BYTES),
            )
        parts.append(record)
    first = parts[0]
    shared = panel_id(
        device_id=first.device_id,
        patient_id=first.patient_id,
        systolic=reading.systolic or 0.0,
        diastolic=reading.diastolic or 0.0,
        pulse=reading.pulse,
        unit=_MM_HG,
        measured_at=first.measured_at,
    )
    return [msgspec.structs.replace(m, panel_id=shared) for m in parts]


def stray_cuff_fields(reading: KitReading) -> str | None:
    """Why a reading that is not a cuff reading must not carry a cuff's fields, or None."""
    present = [
        name
        for name, value in (
            ("systolic", reading.systolic),
            ("diastolic", reading.diastolic),
            ("pulse", reading.pulse),
        )
        if value is not None
    ]
    if not present:
        return None
    return (
        f"{', '.join(present)} belong to a blood_pressure reading, not to {reading.metric}; "
        "send a cuff's values as one blood_pressure reading"
    )
