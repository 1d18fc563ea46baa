"""The monitor's checks of an input record that decodes: what it holds must be something no later
stage chokes on (a text far longer than any real one, a control character, a number that is not
finite, an event time far ahead of the clock) and keyed by its patient. A record that fails is set
aside to the quarantine topic by the batch step (`batch.Processor.handle`), never handled."""

from __future__ import annotations

import time
from datetime import datetime

from contracts import MAX_CLOCK_AHEAD_S, KitStatusEvent, Measurement, QuestionnaireAnswer, unusable_field

__all__ = [
    "MAX_AHEAD_S",
    "UnusableError",
    "check_answer",
    "check_key",
    "check_measurement",
    "check_status",
]

MAX_AHEAD_S = float(MAX_CLOCK_AHEAD_S)  # an event time further ahead of the wall clock is not believed


class UnusableError(ValueError):
    """A record that decodes but holds what no later stage may carry (contracts.unusable_field)."""


_MAX_TEXT = 64  # a unit, a LOINC code, a meter flag or a kit state is a few characters


def _usable(checked: str | None) -> None:
    if checked is not None:
        raise UnusableError(checked)


def _short(texts: dict[str, str | None]) -> None:
    """A text field far longer than any real one is not a reading: an alert event quotes it (twice,
    as the worst and the latest reading), and one larger than Kafka takes stopped the worker at every
    restart (its send raised)."""
    for name, text in texts.items():
        if text is not None and len(text) > _MAX_TEXT:
            raise UnusableError(f"{name} is {len(text)} characters long (at most {_MAX_TEXT})")


def _in_time(name: str, at: datetime) -> None:
    """An event time far ahead of this worker's clock is a kit clock gone wrong (the bridge checks
    first, on its own host's clock, by a tighter bound: contracts.MAX_BRIDGE_CLOCK_AHEAD_S; a record
    from elsewhere may not have been): on the partition's clock it would move every patient's
    deadlines there on by as much (kit silent for all, "measurement missed" checks skipped)."""
    ahead = at.timestamp() - time.time()
    if ahead > MAX_AHEAD_S:
        raise UnusableError(f"{name} is {ahead / 3600:.0f} h ahead of the monitor's clock")
    # a kit whose clock was reset: stored, the time would make the patient's record one the monitor
    # refuses on reading it back (state.decode_kit)
    if at.timestamp() < 0.0:
        raise UnusableError(f"{name} is before 1970 (the kit's clock was reset)")


def check_measurement(m: Measurement) -> Measurement:
    texts = {"loinc": m.loinc, "unit": m.unit, "reported_unit": m.reported_unit, "flag": m.flag}
    _short(texts)
    _usable(unusable_field(texts=texts, numbers={"value": m.value, "reported_value": m.reported_value}))
    _in_time("measured_at", m.measured_at)
    return m


def check_key(key: bytes | None, patient: str, what: str) -> None:
    """The record's key must be the patient it is about: Kafka put it in the key's partition, and a
    patient's state lives in one partition only (another key would give the patient a second state
    there, with its own episodes for the same problem, or file a plan under someone else)."""
    if key != patient.encode():
        raise UnusableError(f"the {what}'s record key is not its patient_id (it must be keyed by patient)")


def check_status(e: KitStatusEvent) -> KitStatusEvent:
    _short({"state": e.state})
    _usable(unusable_field(texts={"state": e.state}, numbers={"battery": e.battery}))
    _in_time("at", e.at)
    return e


def check_answer(a: QuestionnaireAnswer) -> QuestionnaireAnswer:
    """Every text the answer rules pass on (ids into the state key and the events, codes into an
    explanation), not only the longest: a control character hides in a short one as well."""
    texts: dict[str, str | None] = {
        "patient_id": a.patient_id,
        "kit_id": a.kit_id,
        "questionnaire": a.questionnaire,
        "version": a.version,
    }
    for n, item in enumerate(a.items):
        texts[f"items[{n}].link_id"], texts[f"items[{n}].code"] = item.link_id, item.code
    for n, name in enumerate(a.worsening):
        texts[f"worsening[{n}]"] = name
    _short(texts)
    _usable(unusable_field(texts=texts, numbers={}))
    _in_time("authored", a.authored)
    return a
