"""Fair share: the per-kit token buckets, the cheap message costs, their settings, and the worker
refusing status and FHIR messages over a kit's share (issue #27, finding 6)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts import MAX_KIT_PAYLOAD_BYTES, MAX_RAW_EXCERPT_BYTES, MAX_READINGS_PER_MESSAGE
from ingest import bridge as bridge_module
from ingest import fair_share
from ingest.bridge import Bridge
from ingest.fair_share import KitLimiter, OncePer, TokenBucket, fhir_cost, message_cost
from ingest.normaliser import Normaliser
from ingest.registry import Registry
from ingest.settings import BridgeSettings
from ingest.subscriber import Inbound
from runtime.settings import ConfigError, DatabaseSettings, KafkaSettings, MqttSettings
from tests.unit.ingest.test_normaliser import KIT, NOW, _kit


def _limiter(per_minute: float = 60, burst: float = 10) -> KitLimiter:
    return KitLimiter(
        readings_per_minute=per_minute, readings_burst=burst, bytes_per_minute=60_000, bytes_burst=100_000
    )


def test_a_full_bucket_gives_exactly_its_burst_and_not_one_more() -> None:
    """Ten tokens pass ten one-token takes at the same instant; the eleventh is refused."""
    bucket = TokenBucket(rate=1.0, burst=10, now=0.0)
    assert all(bucket.take(1, 0.0) for _ in range(10))
    assert not bucket.take(1, 0.0)


def test_a_cost_exactly_at_the_tokens_held_passes_and_one_over_does_not() -> None:
    """Holding 5 tokens, a cost of 6 is refused and takes nothing; a cost of 5 then passes."""
    bucket = TokenBucket(rate=1.0, burst=5, now=0.0)
    assert not bucket.take(6, 0.0)
    assert bucket.tokens == 5
    assert bucket.take(5, 0.0)
    assert bucket.tokens == 0


def test_tokens_refill_at_the_rate_and_never_past_the_burst() -> None:
    """An empty bucket at 2 tokens/s holds 1 after 0.5 s, 2 after 1 s, and at most its burst later."""
    bucket = TokenBucket(rate=2.0, burst=4, now=0.0)
    assert bucket.take(4, 0.0)
    assert not bucket.take(1.0001, 0.5)
    assert bucket.take(1, 0.5)
    assert bucket.take(2, 1.5)
    assert bucket.refill(1000.0) == 4


def test_a_clock_that_steps_back_adds_nothing() -> None:
    """A `now` before the last one leaves the tokens alone (monotonic clocks, but be safe)."""
    bucket = TokenBucket(rate=1.0, burst=3, now=10.0)
    assert bucket.take(3, 10.0)
    assert bucket.refill(5.0) == 0


def test_a_bucket_needs_a_positive_rate_and_burst() -> None:
    """A zero rate would never refill: refused at construction with the values named."""
    with pytest.raises(ValueError, match="positive rate"):
        TokenBucket(rate=0, burst=1, now=0)


def test_one_kit_over_its_share_leaves_another_kit_untouched() -> None:
    """K1 spends its burst and is refused; K2 still gets its own full burst at the same moment."""
    limiter = _limiter(per_minute=60, burst=10)
    assert limiter.allow("K1", 10, 100, 0.0)
    assert not limiter.allow("K1", 1, 100, 0.0)
    assert limiter.allow("K2", 10, 100, 0.0)
    assert limiter.refused == 1


def test_after_a_burst_the_sustained_rate_applies() -> None:
    """At 60 readings/min a kit that spent its burst may send one reading per second, not two."""
    limiter = _limiter(per_minute=60, burst=10)
    assert limiter.allow("K1", 10, 100, 0.0)
    assert limiter.allow("K1", 1, 100, 1.0)
    assert not limiter.allow("K1", 1, 100, 1.5)
    assert limiter.allow("K1", 1, 100, 2.0)


def test_the_bytes_bucket_limits_a_kit_sending_few_large_messages() -> None:
    """Readings to spare but bytes spent: refused, and neither bucket is charged for the refusal."""
    limiter = _limiter(per_minute=6000, burst=1000)
    assert limiter.allow("K1", 1, 100_000, 0.0)
    assert not limiter.allow("K1", 1, 1_000, 0.0)
    assert limiter.allow("K1", 999, 0, 0.0)  # the refused message took no readings


def test_store_and_forward_catch_up_within_the_default_burst_passes_at_once() -> None:
    """A kit back after 7 days offline (4 messages of 500 readings, its whole backlog) is not throttled."""
    s = BridgeSettings()
    limiter = KitLimiter(
        readings_per_minute=s.kit_readings_per_minute,
        readings_burst=s.kit_readings_burst,
        bytes_per_minute=s.kit_bytes_per_minute,
        bytes_burst=s.kit_bytes_burst,
    )
    assert all(limiter.allow("K1", MAX_READINGS_PER_MESSAGE, 60_000, 0.0) for _ in range(4))


def test_kits_idle_long_enough_to_be_full_again_are_forgotten() -> None:
    """The table keeps only kits that sent lately: an idle kit is swept when a new one comes."""
    limiter = _limiter(per_minute=60, burst=10)  # both buckets full again after 100 s (bytes)
    limiter.allow("K1", 1, 1, 0.0)
    limiter.allow("K2", 1, 1, 50.0)
    assert len(limiter) == 2
    limiter.allow("K3", 1, 1, 101.0)
    assert len(limiter) == 2  # K1 forgotten, K2 (51 s idle) kept


def test_message_cost_reads_seq_and_readings_count_cheaply() -> None:
    """The cost is the reading count and the size; the seq addresses the rate_limited receipt."""
    payload = json.dumps({"kit": "K1", "seq": 7, "readings": [{}, {}, {}]}).encode()
    assert message_cost(payload) == (7, 3, len(payload))


@pytest.mark.parametrize("payload", [b"\x00not json", b"[]", b'{"seq": -1}', b'{"seq": "x", "readings": 5}'])
def test_a_payload_that_is_no_envelope_costs_one_reading_and_has_no_seq(payload: bytes) -> None:
    """Broken payloads are charged too (one reading), so a kit cannot flood with garbage for free."""
    assert message_cost(payload)[:2] == (None, 1)


def test_the_cost_is_capped_at_what_one_valid_message_may_hold() -> None:
    """A message beyond the contract's limits costs at most a full bucket, so it is never stuck here."""
    payload = json.dumps({"seq": 1, "readings": [0] * (MAX_READINGS_PER_MESSAGE + 5), "pad": "x" * 70000})
    _seq, readings, size = message_cost(payload.encode())
    assert (readings, size) == (MAX_READINGS_PER_MESSAGE, MAX_KIT_PAYLOAD_BYTES)


def test_a_payload_over_the_size_limit_is_charged_in_full_without_being_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A refused 1 MB payload listing 500,000 readings took the bridge's single worker 20 ms to count,
    so a kit over its share could still keep the worker busy; over the size limit it is not parsed.
    At the limit it is still read for its seq."""
    at_limit = b'{"seq":7,"readings":[' + b"0," * ((MAX_KIT_PAYLOAD_BYTES - 24) // 2) + b"0]}"
    at_limit += b" " * (MAX_KIT_PAYLOAD_BYTES - len(at_limit))
    assert message_cost(at_limit)[:2] == (7, MAX_READINGS_PER_MESSAGE)

    def unread(_payload: bytes) -> None:
        raise AssertionError("an oversized payload was parsed")

    monkeypatch.setattr(fair_share, "_envelope", type("Unread", (), {"decode": staticmethod(unread)})())
    payload = b'{"seq":7,"readings":[' + b",".join([b"0"] * 500_000) + b"]}"
    assert message_cost(payload) == (None, MAX_READINGS_PER_MESSAGE, MAX_KIT_PAYLOAD_BYTES)


@given(st.binary(max_size=512))
def test_message_cost_never_raises(payload: bytes) -> None:
    """Any bytes in, a cost out."""
    seq, readings, size = message_cost(payload)
    assert 1 <= readings <= MAX_READINGS_PER_MESSAGE
    assert size == len(payload)
    assert seq is None or seq >= 0


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("VAKTROM_BRIDGE_KIT_READINGS_BURST", str(MAX_READINGS_PER_MESSAGE - 1), "could never pass"),
        ("VAKTROM_BRIDGE_KIT_BYTES_BURST", str(MAX_KIT_PAYLOAD_BYTES - 1), "could never pass"),
        ("VAKTROM_BRIDGE_KIT_READINGS_PER_MINUTE", "0", "out of range"),
        ("VAKTROM_BRIDGE_KIT_BYTES_PER_MINUTE", "10", "out of range"),
        ("VAKTROM_BRIDGE_ALERT_PATH_MAX_AGE_S", "0", "1 to 86400"),
        # the monitor sets aside what is timed more than an hour ahead: the bridge may not accept it
        ("VAKTROM_BRIDGE_MAX_CLOCK_AHEAD_S", "3301", "no alert rule sees"),
        ("VAKTROM_BRIDGE_MAX_CLOCK_AHEAD_S", "-1", "out of range"),
    ],
)
def test_bad_fair_share_settings_fail_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    """A limit no message could pass, or none at all, is refused at start-up with its variable named."""
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable) as raised:
        BridgeSettings.from_env()
    assert says in str(raised.value)


def test_the_burst_at_its_minimum_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exactly the largest message's readings and bytes is a valid burst."""
    monkeypatch.setenv("VAKTROM_BRIDGE_KIT_READINGS_BURST", str(MAX_READINGS_PER_MESSAGE))
    monkeypatch.setenv("VAKTROM_BRIDGE_KIT_BYTES_BURST", str(MAX_KIT_PAYLOAD_BYTES))
    s = BridgeSettings.from_env()
    assert (s.kit_readings_burst, s.kit_bytes_burst) == (MAX_READINGS_PER_MESSAGE, MAX_KIT_PAYLOAD_BYTES)


def test_a_kit_roomy_for_the_largest_message_is_charged_after_and_then_counted_exactly() -> None:
    """The fast path: roomy while the buckets hold a largest message; the charge brings it to the limit."""
    limiter = KitLimiter(
        readings_per_minute=60,
        readings_burst=MAX_READINGS_PER_MESSAGE + 1,
        bytes_per_minute=60_000,
        bytes_burst=MAX_KIT_PAYLOAD_BYTES,
    )
    assert limiter.roomy("K1", 0.0)
    limiter.charge("K1", 2, 100)
    assert not limiter.roomy("K1", 0.0)  # 499 readings left: the exact check takes over
    assert limiter.allow("K1", MAX_READINGS_PER_MESSAGE - 1, 0, 0.0)
    assert not limiter.allow("K1", 1, 0, 0.0)


# ------------------------------------------------------------ status and FHIR through the bridge's worker
class _Clock:
    """The bridge's `time` module with a monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleep = time.sleep

    def monotonic(self) -> float:
        return self.now


class _Sink:
    """The producer: keeps each record and acknowledges it at once."""

    def __init__(self) -> None:
        self.records: list[tuple[str, dict[str, Any]]] = []

    def send(self, topic: str, _key: bytes, value: bytes, _headers: Any, done: Any) -> None:
        self.records.append((topic, json.loads(value)))
        done(None)


def _bridge(monkeypatch: pytest.MonkeyPatch, *, receipts: bool = True) -> tuple[Bridge, _Sink, _Clock]:
    """A bridge worker without services: kit KIT-1 has 500 readings of burst and 1 a minute."""
    clock = _Clock()
    monkeypatch.setattr(bridge_module, "time", clock)
    settings = BridgeSettings(
        receipts=receipts,
        kit_readings_per_minute=1,
        kit_readings_burst=MAX_READINGS_PER_MESSAGE,
        kit_bytes_per_minute=1 << 30,
        kit_bytes_burst=1 << 30,
    )
    bridge = Bridge(
        mqtt=MqttSettings(), kafka=KafkaSettings(), database=DatabaseSettings(), settings=settings
    )
    registry = Registry({KIT: _kit()}, 0.0)
    bridge.normaliser = Normaliser(registry=lambda: registry)
    bridge.sink = sink = _Sink()  # type: ignore[assignment]
    bridge.subscriber.wake = lambda: None  # type: ignore[method-assign]
    return bridge, sink, clock


def _inbound(channel: str, payload: bytes) -> Inbound:
    topic = f"vaktrom/v1/kits/{KIT}/{channel}"
    return Inbound(0, topic, KIT, channel, payload, NOW, 0.0, dup=False, session=0)


def _status() -> bytes:
    at = NOW.isoformat()
    return json.dumps(
        {"schema": "vaktrom.kit-status.v1", "kit": KIT, "state": "heartbeat", "at": at}
    ).encode()


def _bundle(entries: int) -> bytes:
    """A Bundle of `entries` entries without a resource (each a rejection; cheap to make and count)."""
    return json.dumps({"resourceType": "Bundle", "entry": [{}] * entries}).encode()


def _metric(bridge: Bridge, name: str) -> float:
    bridge._gauges()
    return bridge.metrics.registry.get_sample_value(name) or 0.0


@pytest.mark.parametrize("receipts", [True, False])
def test_a_status_message_over_the_share_is_dropped_and_counted(
    monkeypatch: pytest.MonkeyPatch, receipts: bool
) -> None:
    """Each status message costs one reading: the 500th (exactly the burst) passes, the 501st makes no
    record, is settled at once without a receipt and is counted, with receipts on or off."""
    bridge, sink, _clock = _bridge(monkeypatch, receipts=receipts)
    for _ in range(MAX_READINGS_PER_MESSAGE):
        bridge._process(_inbound("status", _status()))
    assert len(sink.records) == MAX_READINGS_PER_MESSAGE
    over = _inbound("status", _status())
    bridge._process(over)
    assert len(sink.records) == MAX_READINGS_PER_MESSAGE, "the message over the share made a record"
    assert (over.done, over.remaining, over.receipt) == (True, 0, None)
    assert over in bridge.subscriber.completed, "it is acknowledged, not left in flight"
    assert _metric(bridge, "vaktrom_bridge_rate_limited_status_messages_total") == 1
    assert _metric(bridge, "vaktrom_bridge_rate_limited_messages_total") == 0, "readings are counted apart"
    assert bridge.health()["rate_limited_status_messages"] == 1


def test_a_status_flood_takes_from_the_same_share_as_readings(monkeypatch: pytest.MonkeyPatch) -> None:
    """499 status messages leave one reading of share: a two-reading message is refused rate_limited."""
    bridge, _sink, _clock = _bridge(monkeypatch)
    for _ in range(MAX_READINGS_PER_MESSAGE - 1):
        bridge._process(_inbound("status", _status()))
    payload = json.dumps({"kit": KIT, "seq": 3, "readings": [{}, {}]}).encode()
    refused = _inbound("readings", payload)
    bridge._process(refused)
    assert refused.receipt is not None
    assert [o.rejected for o in refused.receipt.readings] == ["rate_limited", "rate_limited"]


def test_a_fhir_bundle_exactly_at_the_share_passes_and_one_entry_over_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With 3 readings of share left, a 4-entry Bundle is refused (one rate_limited rejection for the
    whole message) and takes nothing; a 3-entry Bundle then passes, each entry its own record."""
    bridge, sink, _clock = _bridge(monkeypatch)
    bridge._process(_inbound("fhir", _bundle(MAX_READINGS_PER_MESSAGE - 3)))
    assert len(sink.records) == MAX_READINGS_PER_MESSAGE - 3  # charged one reading per entry
    sink.records.clear()
    bridge._process(_inbound("fhir", _bundle(4)))
    ((_topic, refusal),) = sink.records
    assert (refusal["reason"], refusal["reading_index"], refusal["kit_id"]) == ("rate_limited", None, KIT)
    assert "fair share" in refusal["detail"]
    sink.records.clear()
    bridge._process(_inbound("fhir", _bundle(3)))
    assert [r["reading_index"] for _t, r in sink.records] == [0, 1, 2]
    assert _metric(bridge, "vaktrom_bridge_rate_limited_fhir_messages_total") == 1


def test_a_fhir_flood_over_the_share_makes_one_rejection_per_kit_per_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A kit out of share sends 50 Bundles of 500 entries in 59.9 s: one rate_limited rejection (its
    excerpt bounded), the other 49 only counted; a minute after the first, one more rejection."""
    bridge, sink, clock = _bridge(monkeypatch)
    bridge._process(_inbound("fhir", _bundle(MAX_READINGS_PER_MESSAGE)))
    sink.records.clear()
    flood = _bundle(MAX_READINGS_PER_MESSAGE)
    start = clock.now
    for i in range(50):
        clock.now = start + i * 59.9 / 49
        bridge._process(_inbound("fhir", flood))
    ((_topic, refusal),) = sink.records
    assert refusal["reason"] == "rate_limited"
    assert len(refusal["raw_excerpt"].encode()) <= MAX_RAW_EXCERPT_BYTES
    assert refusal["raw_size"] == len(flood)
    assert _metric(bridge, "vaktrom_bridge_rate_limited_fhir_messages_total") == 50
    assert _metric(bridge, "vaktrom_bridge_rate_limited_fhir_unrecorded_messages_total") == 49
    assert all(m.done for m in bridge.subscriber.completed), "every refused message is acknowledged"
    clock.now = start + 60.0
    bridge._process(_inbound("fhir", flood))
    assert len(sink.records) == 2, "a minute later the kit gets its next rejection"


def test_one_kits_fhir_refusal_record_does_not_use_up_another_kits() -> None:
    """The one-a-minute allowance of rejection records is per kit; exactly 60 s later is due again."""
    once = OncePer(60.0)
    assert once.due("K1", 0.0)
    assert not once.due("K1", 59.999)
    assert once.due("K2", 30.0)
    assert once.due("K1", 60.0)
    assert not once.due("K2", 60.0)


def test_kits_not_reported_for_a_minute_are_forgotten() -> None:
    """The table of last reports holds only the kits reported within the interval."""
    once = OncePer(60.0)
    once.due("K1", 0.0)
    once.due("K2", 30.0)
    once.due("K3", 61.0)
    assert len(once) == 2  # K1 forgotten, K2 kept


def test_fhir_cost_counts_bundle_entries_cheaply() -> None:
    """A Bundle costs its entries, an Observation (or anything else) one, never more than a message holds."""
    assert fhir_cost(_bundle(125)) == (125, len(_bundle(125)))
    observation = b'{"resourceType": "Observation", "status": "final"}'
    assert fhir_cost(observation) == (1, len(observation))
    assert fhir_cost(_bundle(0))[0] == 1
    assert fhir_cost(_bundle(MAX_READINGS_PER_MESSAGE + 100))[0] == MAX_READINGS_PER_MESSAGE
    assert fhir_cost(b"\xff{not json") == (1, 10)
    oversized = _bundle(1) + b" " * MAX_KIT_PAYLOAD_BYTES
    assert fhir_cost(oversized) == (MAX_READINGS_PER_MESSAGE, MAX_KIT_PAYLOAD_BYTES)


@given(st.binary(max_size=512))
def test_fhir_cost_never_raises(payload: bytes) -> None:
    """Any bytes in, a cost out."""
    readings, size = fhir_cost(payload)
    assert 1 <= readings <= MAX_READINGS_PER_MESSAGE
    assert size == len(payload)
