"""Hostile input for the bridge's tests: strings, JSON and the paths in each channel's documents.

The unit tests (tests/unit/ingest/test_hostile_input.py) feed these to the bridge's core; the
integration test (tests/integration/test_hostile_input.py) sends them through the real pipeline.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

__all__ = [
    "FHIR_FIELDS",
    "FHIR_PATHS",
    "HOSTILE",
    "READING_PATHS",
    "STATUS_PATHS",
    "any_text",
    "edited",
    "edits",
    "hostile_json",
    "hostile_text",
    "set_at",
]

# any code point, lone surrogates included (hypothesis leaves them out unless asked)
any_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()))
HOSTILE = [
    "\x00", "sp\x00o2", "%\x00", "\x00" * 40, "\x1b[31mred", "kg\n", "\x7f", "\x85", "\u2028", "\u202e",
    "\ud800", "x" * 300, "", " ", "\t", "spo2", "%", "KIT-1\n", "\ufeff", "\U0001f600",
]  # fmt: skip
hostile_text = st.sampled_from(HOSTILE) | any_text.filter(lambda s: len(s) < 80)


def set_at(doc: Any, path: tuple[str | int, ...], value: Any) -> None:
    """Put `value` at `path` (keys and list indexes) inside `doc`."""
    for step in path[:-1]:
        doc = doc[step]
    doc[path[-1]] = value


def edited(doc: Any, paths: list[tuple[str | int, ...]], chosen: list[tuple[int, str]], key: str) -> Any:
    """`doc` with each chosen hostile value put at one of `paths`, and a hostile key added."""
    for index, value in chosen:
        set_at(doc, paths[index % len(paths)], value)
    doc[key] = 1  # a hostile key as well (empty: left out)
    if not key:
        del doc[key]
    return doc


FHIR_FIELDS: list[tuple[str, tuple[str | int, ...]]] = [
    ("Observation.status", ("status",)),
    ("code.coding[0].system", ("code", "coding", 0, "system")),
    ("code.coding[0].code", ("code", "coding", 0, "code")),
    ("effectiveDateTime", ("effectiveDateTime",)),
    ("valueQuantity.unit", ("valueQuantity", "unit")),
    ("valueQuantity.system", ("valueQuantity", "system")),
    ("valueQuantity.code", ("valueQuantity", "code")),
    ("device.identifier.value", ("device", "identifier", "value")),
]
READING_PATHS: list[tuple[str | int, ...]] = [
    ("schema",), ("kit",), ("sent_at",), ("readings", 0, "device"), ("readings", 0, "metric"),
    ("readings", 0, "unit"), ("readings", 0, "flag"), ("readings", 0, "measured_at"),
    ("readings", 0, "value"), ("readings", 1, "metric"), ("readings", 1, "unit"), ("seq",),
]  # fmt: skip
STATUS_PATHS: list[tuple[str | int, ...]] = [
    ("schema",), ("kit",), ("state",), ("at",), ("firmware",), ("queued",), ("battery",)
]  # fmt: skip
FHIR_PATHS: list[tuple[str | int, ...]] = [
    ("resourceType",), ("id",), ("subject", "reference"), ("category", 0, "coding", 0, "code"),
    *(path for _, path in FHIR_FIELDS), ("device", "display"), ("valueQuantity", "comparator"),
]  # fmt: skip
edits = st.lists(st.tuples(st.integers(0, 1000), hostile_text), min_size=1, max_size=4)

hostile_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | hostile_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=5),
    max_leaves=20,
)
