"""The committed JSON Schemas match the types, and both accept the good and refuse the bad."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import jsonschema
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import SCHEMA_DIR, SCHEMA_TYPES, KitReadingMessage
from contracts._schema import stale_schemas
from tests.unit.contracts.examples import BAD, GOOD, mutate


def _validator(stem: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / f"{stem}.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


def test_committed_schemas_are_up_to_date() -> None:
    """Editing a contract type without regenerating the schema files fails here (`make schemas`)."""
    assert stale_schemas() == []


def test_every_contract_has_an_example() -> None:
    """A new contract kind gets an example here, so the two tests below cover it too."""
    assert set(GOOD) == set(SCHEMA_TYPES)


@pytest.mark.parametrize("stem", sorted(GOOD))
def test_good_example_is_accepted_by_schema_and_type(stem: str) -> None:
    """The JSON Schema file and the Python type agree that the good example is valid."""
    payload = GOOD[stem]
    _validator(stem).validate(payload)
    decoded = msgspec.json.decode(json.dumps(payload), type=SCHEMA_TYPES[stem])
    assert msgspec.json.decode(msgspec.json.encode(decoded), type=SCHEMA_TYPES[stem]) == decoded


@pytest.mark.parametrize(("stem", "why", "change"), BAD, ids=[f"{s}:{w}" for s, w, _ in BAD])
def test_bad_example_is_rejected_by_schema_and_type(stem: str, why: str, change: dict[str, Any]) -> None:
    """Each broken payload is refused by the JSON Schema *and* by the decoder the stages use."""
    payload = mutate(stem, change)
    with pytest.raises(jsonschema.ValidationError):
        _validator(stem).validate(payload)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(json.dumps(payload), type=SCHEMA_TYPES[stem])


def test_time_without_offset_is_rejected() -> None:
    """A kit must say which time zone its clock is in; a naive time is ambiguous around DST."""
    payload = mutate("kit-reading.v1", {"sent_at": "2026-11-22T07:31:02"})
    with pytest.raises(msgspec.ValidationError, match="timezone"):
        msgspec.json.decode(json.dumps(payload), type=KitReadingMessage)


@given(st.binary(max_size=512))
def test_arbitrary_bytes_never_escape_as_anything_but_a_decode_error(data: bytes) -> None:
    """Whatever a kit sends, decoding gives a message or msgspec.DecodeError, never another exception."""
    with contextlib.suppress(msgspec.DecodeError):
        msgspec.json.decode(data, type=KitReadingMessage)


@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=20,
    )
)
def test_arbitrary_json_never_escapes_as_anything_but_a_decode_error(value: object) -> None:
    """Well-formed JSON of any shape is either a valid message or a ValidationError."""
    with contextlib.suppress(msgspec.DecodeError):
        msgspec.json.decode(msgspec.json.encode(value), type=KitReadingMessage)
