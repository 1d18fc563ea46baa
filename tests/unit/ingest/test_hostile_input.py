"""Hostile text in every field of every contract the bridge accepts: refused with a reason, and
every record that comes out (measurement, rejection, status event) is clean, bounded UTF-8 that any
later stage can store (issue #27, finding 1: a NUL in `metric` once stopped the archive)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import (
    MAX_RAW_EXCERPT_BYTES,
    KitStatusEvent,
    Measurement,
    Rejection,
    RejectReason,
)
from ingest.fair_share import message_cost
from ingest.normaliser import Normaliser, Outcome
from ingest.registry import Registry
from ingest.text import MAX_DETAIL_BYTES, MAX_FIELD_BYTES
from tests.support.hostile import (
    FHIR_FIELDS,
    FHIR_PATHS,
    READING_PATHS,
    STATUS_PATHS,
    edited,
    edits,
    hostile_json,
    hostile_text,
    set_at,
)
from tests.unit.ingest.test_fhir import _observation
from tests.unit.ingest.test_normaliser import KIT, NOW, TOPIC, _kit, _payload, _reading
from tests.unit.ingest.test_text import clean

STATUS_TOPIC = f"vaktrom/v1/kits/{KIT}/status"
FHIR_TOPIC = f"vaktrom/v1/kits/{KIT}/fhir"
CONTROLS = ["\x00", "\x01", "\t", "\n", "\x1b", "\x7f", "\x85", "\x9f"]


def _normaliser() -> Normaliser:
    registry = Registry({KIT: _kit()}, 0.0)
    return Normaliser(registry=lambda: registry)


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def assert_storable(outcome: Outcome) -> None:
    """Every record: clean UTF-8 text, bounded, finite numbers, and it survives its own contract."""
    status = [outcome.status] if outcome.status is not None else []
    for record in (*outcome.measurements, *outcome.rejections, *status):
        wire = msgspec.json.encode(record)
        assert msgspec.json.decode(wire, type=type(record)) == record
        for text in _strings(msgspec.to_builtins(record)):
            assert clean(text), (type(record).__name__, text)
        if isinstance(record, Rejection):
            assert len(record.detail.encode()) <= MAX_DETAIL_BYTES
            assert record.detail
            assert len(record.raw_excerpt.encode()) <= MAX_RAW_EXCERPT_BYTES
            for field in (record.source_topic, record.kit_id, record.metric, record.reported_unit):
                assert field is None or len(field.encode()) <= MAX_FIELD_BYTES
        if isinstance(record, Measurement):
            assert record.value is None or record.value == record.value  # not NaN
            assert record.value is None or abs(record.value) < float("inf")
    if outcome.receipt is not None:
        codes = {r.value for r in RejectReason}
        assert all(o.rejected is None or o.rejected in codes for o in outcome.receipt.readings)


def _encode(doc: Any, ascii_only: bool) -> bytes:
    """JSON as a kit might send it; a lone surrogate becomes an escape or invalid UTF-8 bytes."""
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


# ------------------------------------------------------------------ finding 1, exactly
def test_nul_in_metric_or_unit_is_refused_and_the_rejection_carries_no_nul() -> None:
    """The reading that stopped the archive: NUL in `metric` (and in `unit`) is `invalid_text`, and
    the rejection names the field, escapes the NUL as \\x00 in every field and holds no NUL itself."""
    normaliser = _normaliser()
    for field, reading in (("metric", _reading("sp\x00o2")), ("unit", _reading("spo2", 91.0, "%\x00"))):
        outcome = normaliser.readings(TOPIC, KIT, _payload(reading), NOW)
        (rejection,) = outcome.rejections
        assert rejection.reason is RejectReason.INVALID_TEXT
        assert f"{field} holds the control character U+0000" in rejection.detail
        assert "\\x00" in (rejection.metric or "") + (rejection.reported_unit or "")
        assert "\\u0000" in rejection.raw_excerpt  # the reading as JSON text, escaped there already
        decoded = json.loads(msgspec.json.encode(rejection))  # as any consumer reads it off Kafka
        assert not any("\x00" in text for text in _strings(decoded))
        assert_storable(outcome)
        assert outcome.receipt is not None
        assert [o.rejected for o in outcome.receipt.readings] == ["invalid_text"]


@pytest.mark.parametrize("control", CONTROLS)
@pytest.mark.parametrize("field", ["device", "metric", "unit"])
def test_each_control_character_in_each_reading_text_field_is_invalid_text(field: str, control: str) -> None:
    """C0 (NUL, SOH, tab, newline, ESC), DEL and C1, in device, metric or unit: `invalid_text` naming
    the field; the other readings of the message still count."""
    bad = _reading()
    bad[field] = f"{bad[field]}{control}"
    outcome = _normaliser().readings(TOPIC, KIT, _payload(_reading(), bad), NOW)
    if field == "device" and control != "\n":  # the contract's id pattern refuses it first
        assert [r.reason for r in outcome.rejections] == [RejectReason.SCHEMA]
    else:
        assert len(outcome.measurements) == 1
        (rejection,) = outcome.rejections
        assert rejection.reason is RejectReason.INVALID_TEXT
        assert rejection.detail.startswith(f"{field} holds the control character U+{ord(control):04X}")
    assert_storable(outcome)


def test_a_meter_flag_with_a_trailing_newline_is_invalid_text() -> None:
    """ "HI\\n" also passes the flag's `$`-anchored pattern; it is refused as text, not as a wrong flag."""
    outcome = _normaliser().readings(
        TOPIC, KIT, _payload(_reading("glucose", None, "mg/dL", flag="HI\n")), NOW
    )
    (rejection,) = outcome.rejections
    assert rejection.reason is RejectReason.INVALID_TEXT
    assert rejection.detail.startswith("flag holds the control character U+000A at position 2")
    assert_storable(outcome)


def test_a_kit_id_with_a_trailing_newline_is_invalid_text_not_another_kit() -> None:
    """ "KIT-1\\n" slips through a `$`-anchored pattern; it is refused as text, with a receipt."""
    payload = _payload(_reading(), kit=f"{KIT}\n")
    outcome = _normaliser().readings(TOPIC, KIT, payload, NOW)
    assert [r.reason for r in outcome.rejections] == [RejectReason.INVALID_TEXT]
    assert outcome.receipt is not None
    assert outcome.receipt.seq == 7
    assert_storable(outcome)


def test_an_unknown_field_named_with_a_nul_is_a_schema_rejection_with_the_name_escaped() -> None:
    """The decoder quotes an unknown field's name in its message; the detail escapes it."""
    outcome = _normaliser().readings(TOPIC, KIT, _payload(_reading(**{"x\x00": 1})), NOW)
    (rejection,) = outcome.rejections
    assert rejection.reason is RejectReason.SCHEMA
    assert "x\\x00" in rejection.detail
    assert_storable(outcome)


def test_raw_nul_and_invalid_utf8_bytes_are_malformed_with_an_escaped_excerpt() -> None:
    """NUL bytes and bytes that are not UTF-8 in a payload: `malformed`, excerpt written \\x00, \\xff."""
    outcome = _normaliser().readings(TOPIC, KIT, b'{"kit": "\x00\xff"}', NOW)
    (rejection,) = outcome.rejections
    assert rejection.reason is RejectReason.MALFORMED
    assert rejection.raw_excerpt == '{"kit": "\\x00\\xff"}'
    assert_storable(outcome)


@pytest.mark.parametrize("channel", ["readings", "fhir"])
def test_a_value_beyond_the_float_range_is_refused_and_never_becomes_infinity(channel: str) -> None:
    """A glucose HI whose value is 1e999 (infinity if it were decoded) is refused as `schema`, on the
    kit contract and on FHIR alike; no measurement carries an infinite value."""
    if channel == "readings":
        payload = _payload(_reading("glucose", 1.0, "mg/dL", flag="HI"))
    else:
        payload = json.dumps(_observation("2339-0", 1.0, "mg/dL")).encode()
    payload = payload.replace(b'"value": 1.0', b'"value": 1e999')
    outcome = getattr(_normaliser(), channel)(TOPIC, KIT, payload, NOW)
    assert [r.reason for r in outcome.rejections] == [RejectReason.SCHEMA]
    assert "out of range" in outcome.rejections[0].detail
    assert_storable(outcome)


# ------------------------------------------------------------------ length limits, exactly
@pytest.mark.parametrize(
    ("field", "limit", "at_limit"),
    [
        ("metric", 32, RejectReason.UNKNOWN_METRIC),
        ("unit", 16, RejectReason.UNIT_NOT_ACCEPTED),
        ("device", 64, RejectReason.UNKNOWN_DEVICE),
    ],
)
def test_reading_text_at_its_limit_is_read_and_one_over_is_refused(
    field: str, limit: int, at_limit: RejectReason
) -> None:
    """Boundary: a field of exactly its contract's length is read (and judged on its meaning); one
    character more refuses the message as `schema`, naming the field."""
    normaliser = _normaliser()
    for length, reason in ((limit, at_limit), (limit + 1, RejectReason.SCHEMA)):
        reading = _reading() | {field: "X" * length}
        outcome = normaliser.readings(TOPIC, KIT, _payload(reading), NOW)
        (rejection,) = outcome.rejections
        assert rejection.reason is reason, (length, rejection.detail)
        if reason is RejectReason.SCHEMA:
            assert f"$.readings[0].{field}" in rejection.detail
        assert_storable(outcome)


def test_the_kit_id_in_the_topic_at_its_limit_is_looked_up_and_one_over_is_invalid_text() -> None:
    """Boundary: a 64-character kit id in the topic is an unknown kit; 65 characters is `invalid_text`
    before anything else is read, and the rejection carries the id bounded."""
    normaliser = _normaliser()
    for length, reason in ((64, RejectReason.UNKNOWN_KIT), (65, RejectReason.INVALID_TEXT)):
        kit = "K" * length
        topic = f"vaktrom/v1/kits/{kit}/readings"
        outcome = normaliser.readings(topic, kit, _payload(_reading(), kit=kit), NOW)
        assert [r.reason for r in outcome.rejections] == [reason]
        assert outcome.receipt is None
        assert_storable(outcome)
    huge = "K" * 10_000
    outcome = normaliser.status(f"vaktrom/v1/kits/{huge}/status", huge, b"{}", NOW)
    (rejection,) = outcome.rejections
    assert rejection.reason is RejectReason.INVALID_TEXT
    assert len((rejection.kit_id or "").encode()) <= MAX_FIELD_BYTES
    assert "10,000 characters" in rejection.detail


def _status(**fields: Any) -> dict[str, Any]:
    return {"schema": "vaktrom.kit-status.v1", "kit": KIT, "state": "online", "at": NOW.isoformat()} | fields


def test_status_firmware_with_a_control_character_or_over_its_limit_is_refused() -> None:
    """Firmware: 64 characters pass, 65 are `schema`, and a NUL or ESC in it is `invalid_text`."""
    normaliser = _normaliser()

    def reasons(doc: dict[str, Any]) -> list[RejectReason]:
        outcome = normaliser.status(STATUS_TOPIC, KIT, json.dumps(doc).encode(), NOW)
        assert_storable(outcome)
        return [r.reason for r in outcome.rejections]

    assert reasons(_status(firmware="F" * 64)) == []
    assert reasons(_status(firmware="F" * 65)) == [RejectReason.SCHEMA]
    assert reasons(_status(firmware="1.0\x00")) == [RejectReason.INVALID_TEXT]
    assert reasons(_status(firmware="\x1b[2J")) == [RejectReason.INVALID_TEXT]


def test_a_status_from_a_kit_whose_clock_is_far_ahead_is_clock_future_not_a_status_event() -> None:
    """A heartbeat stamped past the clock tolerance (5 min) is refused as `clock_future`: its time
    would move the monitor's partition clock (the latest status time) into the future, and every
    patient on that partition would go "kit silent" and have their episodes' all-clear periods end.
    At exactly the tolerance it is taken."""
    normaliser = _normaliser()
    at_limit = normaliser.status(
        STATUS_TOPIC, KIT, json.dumps(_status(at=(NOW + timedelta(minutes=5)).isoformat())).encode(), NOW
    )
    assert at_limit.status is not None
    assert at_limit.rejections == []
    for ahead in (timedelta(minutes=5, seconds=1), timedelta(days=400)):
        doc = _status(state="heartbeat", at=(NOW + ahead).isoformat())
        outcome = normaliser.status(STATUS_TOPIC, KIT, json.dumps(doc).encode(), NOW)
        assert outcome.status is None
        assert [r.reason for r in outcome.rejections] == [RejectReason.CLOCK_FUTURE]
        assert_storable(outcome)
    far = normaliser.status(
        STATUS_TOPIC, KIT, json.dumps(_status(at="9999-12-31T23:59:59-01:00")).encode(), NOW
    )
    assert [r.reason for r in far.rejections] == [RejectReason.CLOCK_FUTURE]


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_time_at_the_calendars_ends_is_answered_with_a_reason_on_every_channel(at: str) -> None:
    """Times a kit with a reset clock may send, which have no UTC equivalent in Python's range: they
    raised OverflowError in the normaliser (an `internal_error`, no receipt, so the kit resent it
    forever); now they are clock_past or clock_future like any clock gone wrong."""
    normaliser = _normaliser()
    reason = RejectReason.CLOCK_PAST if at.startswith("0001") else RejectReason.CLOCK_FUTURE
    sent = json.loads(_payload(_reading()))
    sent["sent_at"] = at
    outcome = normaliser.readings(TOPIC, KIT, json.dumps(sent).encode(), NOW)
    assert len(outcome.measurements) == 1
    for outcome in (
        normaliser.readings(TOPIC, KIT, _payload(_reading(measured_at=at)), NOW),
        normaliser.fhir(
            FHIR_TOPIC, KIT, json.dumps(_observation() | {"effectiveDateTime": at}).encode(), NOW
        ),
    ):
        assert [r.reason for r in outcome.rejections] == [reason]
        assert_storable(outcome)
    status = normaliser.status(STATUS_TOPIC, KIT, json.dumps(_status(at=at)).encode(), NOW)
    assert_storable(status)
    assert [r.reason for r in status.rejections] == ([] if reason is RejectReason.CLOCK_PAST else [reason])


@pytest.mark.parametrize(("name", "path"), FHIR_FIELDS)
def test_a_nul_in_any_fhir_field_that_is_read_is_invalid_text(name: str, path: tuple[str | int, ...]) -> None:
    """FHIR: NUL appended to any field the bridge reads refuses the Observation as `invalid_text`,
    naming the field by its FHIR path."""
    obs = _observation()
    doc: Any = obs
    for step in path[:-1]:
        doc = doc[step]
    doc[path[-1]] = f"{doc[path[-1]]}\x00"
    outcome = _normaliser().fhir(FHIR_TOPIC, KIT, json.dumps(obs).encode(), NOW)
    (rejection,) = outcome.rejections
    assert rejection.reason is RejectReason.INVALID_TEXT
    assert rejection.detail.startswith(f"{name} holds the control character U+0000")
    assert_storable(outcome)


def test_fhir_text_at_its_limit_is_read_and_one_over_is_invalid_text() -> None:
    """Boundary: a LOINC code of 64 characters is an unknown code, 65 is `invalid_text`; a coding
    system of 256 characters is read, 257 is `invalid_text`."""
    normaliser = _normaliser()

    def reason(path: tuple[str | int, ...], value: str) -> RejectReason:
        obs = _observation()
        set_at(obs, path, value)
        outcome = normaliser.fhir(FHIR_TOPIC, KIT, json.dumps(obs).encode(), NOW)
        assert_storable(outcome)
        return outcome.rejections[0].reason

    code, system = ("code", "coding", 0, "code"), ("code", "coding", 0, "system")
    assert reason(code, "9" * 64) is RejectReason.UNKNOWN_METRIC
    assert reason(code, "9" * 65) is RejectReason.INVALID_TEXT
    assert reason(system, "s" * 256) is RejectReason.UNKNOWN_METRIC
    assert reason(system, "s" * 257) is RejectReason.INVALID_TEXT


# ------------------------------------------------------------------ properties


@settings(max_examples=300, deadline=None)
@given(edits, st.sampled_from(["", "\x00", "m\x00", "\x85", "value"]), st.booleans())
def test_hostile_text_in_any_reading_field_gives_records_that_can_be_stored(
    chosen: list[tuple[int, str]], key: str, ascii_only: bool
) -> None:
    """Property: hostile strings in any field (and as a key) of a kit-readings message give a
    measurement or a rejection, never an exception, and every record is clean and bounded."""
    doc = json.loads(_payload(_reading(), _reading("pulse", 70.0, "/min")))
    payload = _encode(edited(doc, READING_PATHS, chosen, key), ascii_only)
    outcome = _normaliser().readings(TOPIC, KIT, payload, NOW)
    assert outcome.record_count >= 1
    assert_storable(outcome)


@settings(max_examples=200, deadline=None)
@given(edits, st.sampled_from(["", "\x00", "\x1b"]), st.booleans())
def test_hostile_text_in_any_status_field_gives_records_that_can_be_stored(
    chosen: list[tuple[int, str]], key: str, ascii_only: bool
) -> None:
    """Property: the same for kit-status messages."""
    payload = _encode(edited(_status(firmware="1.0"), STATUS_PATHS, chosen, key), ascii_only)
    outcome = _normaliser().status(STATUS_TOPIC, KIT, payload, NOW)
    assert outcome.record_count >= 1
    assert_storable(outcome)


@settings(max_examples=300, deadline=None)
@given(edits, st.sampled_from(["", "\x00", "extension"]), st.booleans(), st.booleans())
def test_hostile_text_in_any_fhir_field_gives_records_that_can_be_stored(
    chosen: list[tuple[int, str]], key: str, ascii_only: bool, bundle: bool
) -> None:
    """Property: the same for FHIR Observations, alone or in a Bundle next to a good one."""
    obs = edited(_observation(), FHIR_PATHS, chosen, key)
    doc = {"resourceType": "Bundle", "entry": [{"resource": obs}, {"resource": _observation()}]}
    outcome = _normaliser().fhir(FHIR_TOPIC, KIT, _encode(doc if bundle else obs, ascii_only), NOW)
    assert outcome.record_count >= 1
    assert_storable(outcome)


@settings(max_examples=300, deadline=None)
@given(hostile_json, st.booleans())
def test_any_json_with_hostile_strings_on_any_channel_gives_storable_records(
    doc: Any, ascii_only: bool
) -> None:
    """Property: arbitrary JSON (hostile keys and values, non-finite numbers) on readings, status and
    FHIR: at least one record each time, all of them storable."""
    payload = json.dumps(doc, ensure_ascii=ascii_only, allow_nan=True).encode("utf-8", "surrogatepass")
    normaliser = _normaliser()
    for handler, topic in ((normaliser.readings, TOPIC), (normaliser.status, STATUS_TOPIC)):
        outcome = handler(topic, KIT, payload, NOW)
        assert outcome.record_count >= 1
        assert_storable(outcome)
    outcome = normaliser.fhir(FHIR_TOPIC, KIT, payload, NOW)
    assert outcome.record_count >= 1
    assert_storable(outcome)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_any_bytes_give_storable_records(payload: bytes) -> None:
    """Property: arbitrary bytes (NUL, invalid UTF-8) on every channel give clean, bounded rejections."""
    normaliser = _normaliser()
    for handler in (normaliser.readings, normaliser.status, normaliser.fhir):
        outcome = handler(TOPIC, KIT, payload, NOW)
        assert outcome.record_count >= 1
        assert_storable(outcome)


def test_a_valid_reading_is_untouched_by_the_text_checks() -> None:
    """Control: printable text outside ASCII is not a control character: a thermometer reporting
    in "°C" still gives a measurement."""
    reading = _reading("body_temperature", 37.2, "°C")
    reading["measured_at"] = (NOW - timedelta(minutes=5)).isoformat()
    outcome = _normaliser().readings(TOPIC, KIT, _payload(reading), NOW)
    (measurement,) = outcome.measurements
    assert isinstance(measurement, Measurement)
    assert not isinstance(measurement, KitStatusEvent)
    assert_storable(outcome)


def test_invalid_utf8_inside_one_bundle_entry_refuses_that_entry_only() -> None:
    """Found by the FHIR property above: the Bundle decoder leaves entries raw, so bytes that are not
    UTF-8 inside one entry surfaced only when that entry was decoded, as an exception (an
    `internal_error` for the whole message). Now that entry is `malformed` and the good one counts."""
    good = json.dumps(_observation()).encode()
    bad = good.replace(b'"status": "final"', b'"status": "fin\xed\xa0\x80al"')
    payload = (
        b'{"resourceType": "Bundle", "entry": [{"resource": ' + bad + b'}, {"resource": ' + good + b"}]}"
    )
    outcome = _normaliser().fhir(FHIR_TOPIC, KIT, payload, NOW)
    assert [r.reason for r in outcome.rejections] == [RejectReason.MALFORMED]
    assert outcome.rejections[0].reading_index == 0
    assert len(outcome.measurements) == 1
    assert_storable(outcome)


@pytest.mark.parametrize("channel", ["readings", "status", "fhir"])
@pytest.mark.parametrize(
    "prefix",
    [
        b'{"schema": "vaktrom.kit-reading.v1", "x": ',  # in a field the contract does not have
        b'{"resourceType": "Observation", "extension": ',  # in a field FHIR input ignores
        b'{"seq": 1, "readings": 5, "x": ',  # where only the receipt's envelope is read
    ],
)
def test_json_nested_thousands_of_levels_deep_is_malformed_not_an_exception(
    channel: str, prefix: bytes
) -> None:
    """Found while writing this suite: 30,000 nested arrays (60 KB, under the size limit) in a field
    the decoder skips made msgspec raise RecursionError out of the normaliser (an `internal_error`
    for operators); it is a `malformed` payload, said so in words."""
    payload = prefix + b"[" * 30_000 + b"]" * 30_000 + b"}"
    outcome = getattr(_normaliser(), channel)(TOPIC, KIT, payload, NOW)
    reasons = [r.reason for r in outcome.rejections]
    assert reasons in ([RejectReason.MALFORMED], [RejectReason.SCHEMA])
    if reasons == [RejectReason.MALFORMED]:
        assert "nested too deeply" in outcome.rejections[0].detail
    assert_storable(outcome)


def test_the_fair_share_cost_of_deeply_nested_json_is_one_reading_not_an_exception() -> None:
    """The bridge reads a rate-limited kit's message cost outside the normaliser, on its worker
    thread, where an exception stops the bridge: deep JSON there counts as one reading."""
    payload = b'{"seq": 3, "x": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert message_cost(payload) == (None, 1, len(payload))


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        ("1e999", RejectReason.SCHEMA),  # no float holds it
        ("-1e999", RejectReason.SCHEMA),
        ("NaN", RejectReason.MALFORMED),  # not JSON
        ("Infinity", RejectReason.MALFORMED),
        ("18446744073709551616", RejectReason.IMPLAUSIBLE),
        ("1e-400", RejectReason.IMPLAUSIBLE),  # rounds to 0.0
        ("5e-324", RejectReason.IMPLAUSIBLE),
        ("-0", RejectReason.IMPLAUSIBLE),
    ],
)
def test_numbers_no_reading_can_hold_are_refused_with_a_reason(token: str, reason: RejectReason) -> None:
    """Huge, tiny, non-finite and negative-zero SpO2 values: each a rejection with its reason."""
    payload = _payload(_reading("spo2", 95.0)).replace(b'"value": 95.0', f'"value": {token}'.encode())
    outcome = _normaliser().readings(TOPIC, KIT, payload, NOW)
    assert [r.reason for r in outcome.rejections] == [reason]
    assert_storable(outcome)


def test_a_duplicated_key_counts_once_and_its_last_value_is_checked() -> None:
    """`"metric": "spo2", "metric": "sp\\u0000o2"`: the last value counts and is refused as text;
    the other order gives the measurement."""
    base = _payload(_reading("spo2", 95.0))
    nul_last = base.replace(b'"metric": "spo2"', b'"metric": "spo2", "metric": "sp\\u0000o2"')
    nul_first = base.replace(b'"metric": "spo2"', b'"metric": "sp\\u0000o2", "metric": "spo2"')
    refused = _normaliser().readings(TOPIC, KIT, nul_last, NOW)
    assert [r.reason for r in refused.rejections] == [RejectReason.INVALID_TEXT]
    assert len(_normaliser().readings(TOPIC, KIT, nul_first, NOW).measurements) == 1
    assert_storable(refused)


@settings(max_examples=200, deadline=None)
@given(hostile_text | st.text(min_size=60, max_size=400))
def test_any_kit_id_in_the_topic_gives_storable_records(kit_id: str) -> None:
    """Property: whatever kit id the topic names (control characters, a surrogate, thousands of
    characters), every channel answers with records that can be stored, never an exception. It found
    that a lone surrogate in the topic made the rejection id's UTF-8 hash raise (MQTT brokers deliver
    only valid UTF-8 topics, but the core no longer depends on that)."""
    normaliser = _normaliser()
    payload = _payload(_reading(), kit=kit_id) if kit_id else b"{}"
    for channel, handler in (("readings", normaliser.readings), ("status", normaliser.status)):
        outcome = handler(f"vaktrom/v1/kits/{kit_id}/{channel}", kit_id, payload, NOW)
        assert outcome.record_count >= 1
        assert_storable(outcome)
    outcome = normaliser.fhir(
        f"vaktrom/v1/kits/{kit_id}/fhir", kit_id, json.dumps(_observation()).encode(), NOW
    )
    assert outcome.record_count >= 1
    assert_storable(outcome)
