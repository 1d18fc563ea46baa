"""Deterministic identifiers: the same reading always gets the same id, wherever it is computed.

A kit that did not see its delivery receipt resends the reading, and Kafka delivers at least once;
the measurement id is what makes every copy recognisable, so storage keeps one and the monitor
counts one. In the spirit of the HL7 Personal Health Device implementation guide, the id is built
from what identifies an observation: the device, the patient, what was measured, the value as the
device reported it and when it was measured.

The recipe is part of the contract (non-Python clients may compute it too):

    sha256( "m1|" device "|" patient "|" metric "|" value "|" unit "|" flag "|" measured )
    -> first 32 hex digits (128 bits)

where `value` is the reported value printed with exactly six decimals ("82.300000", "" when the
reading is a meter flag without a value), `unit` the reported UCUM code, `flag` "HI", "LO" or "",
and `measured` the measured time in UTC with milliseconds: "2026-11-22T06:31:00.000Z".

A blood-pressure cuff reading becomes one measurement per component (bp_systolic, bp_diastolic,
pulse), each with its own id by the recipe above (so storage keys stay unique), and all with one
panel id naming the cuff measurement:

    sha256( "p1|" device "|" patient "|blood_pressure|" systolic "|" diastolic "|" pulse "|" unit
            "|" measured )

with the values printed as above ("" for a pulse the cuff did not send) and `unit` "mm[Hg]".
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

__all__ = ["answer_id", "episode_id", "format_instant", "measurement_id", "panel_id", "rejection_id"]


def format_instant(moment: datetime) -> str:
    """An aware datetime as UTC with milliseconds, the one spelling used inside ids."""
    if moment.tzinfo is None:
        raise ValueError("an instant needs a time zone; naive datetimes are ambiguous")
    utc = moment.astimezone(UTC)
    if utc.year >= 1000:  # isoformat spells these as %Y does, at a third of strftime's cost
        return f"{utc.isoformat(timespec='seconds')[:19]}.{moment.microsecond // 1000:03d}Z"
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _digest(*parts: str) -> str:
    return hashlib.sha256("|".join(parts).encode("utf-8")).hexdigest()[:32]


def measurement_id(
    *,
    device_id: str,
    patient_id: str,
    metric: str,
    reported_value: float | None,
    reported_unit: str,
    flag: str | None,
    measured_at: datetime,
) -> str:
    """The id of one reading; identical for every resend of it."""
    value = "" if reported_value is None else f"{reported_value:.6f}"
    return _digest(
        "m1", device_id, patient_id, metric, value, reported_unit, flag or "", format_instant(measured_at)
    )


def panel_id(
    *,
    device_id: str,
    patient_id: str,
    systolic: float,
    diastolic: float,
    pulse: float | None,
    unit: str,
    measured_at: datetime,
) -> str:
    """The id of one blood-pressure cuff measurement, shared by its component measurements."""
    return _digest(
        "p1",
        device_id,
        patient_id,
        "blood_pressure",
        f"{systolic:.6f}",
        f"{diastolic:.6f}",
        "" if pulse is None else f"{pulse:.6f}",
        unit,
        format_instant(measured_at),
    )


def rejection_id(*, source_topic: str, payload: bytes, index: int | None) -> str:
    """The id of a rejection: the same bad message rejected twice is recognisably the same."""
    payload_hash = hashlib.sha256(payload).hexdigest()
    return _digest("r1", source_topic, payload_hash, "" if index is None else str(index))


def episode_id(*, patient_id: str, rule_id: str, opened_by: str) -> str:
    """The id of an alert episode, from the patient, the rule (its problem) and what opened it: the
    monitor's `opener`, the opening reading's or answer's id with its Kafka offset."""
    return _digest("e1", patient_id, rule_id, opened_by)


def answer_id(
    *, kit_id: str, patient_id: str, response_id: str, questionnaire: str, authored: datetime
) -> str:
    """The id of one questionnaire response: sha256("a1|" kit "|" patient "|" response id "|"
    questionnaire "|" authored) -> 32 hex digits; identical for every resend of it."""
    return _digest("a1", kit_id, patient_id, response_id, questionnaire, format_instant(authored))
