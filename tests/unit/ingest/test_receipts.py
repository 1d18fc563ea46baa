"""Delivery receipts stay small enough for any kit and for the broker's packet limit."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from contracts import (
    MAX_KIT_PAYLOAD_BYTES,
    MAX_READINGS_PER_MESSAGE,
    DeliveryReceipt,
    ReadingOutcome,
    ReceiptEntry,
)
from ingest.metrics import BridgeMetrics
from ingest.subscriber import Subscriber
from runtime.settings import MqttSettings
from tests.unit.ingest.test_hostile_input import _normaliser
from tests.unit.ingest.test_normaliser import KIT, NOW, TOPIC


def _subscriber(sent: list[bytes]) -> Subscriber:
    sub = Subscriber(
        mqtt_settings=MqttSettings(), client_id="t", share_group="g", receipts=True, receipt_interval=0.1,
        receive_maximum=10, deliver=lambda _inbound: None, metrics=BridgeMetrics(),
    )  # fmt: skip

    def publish(_topic: str, payload: bytes, qos: int = 0) -> Any:
        sent.append(payload)

    sub.client.publish = publish  # type: ignore[method-assign,assignment]
    return sub


def test_a_batch_of_large_rate_limited_messages_is_split_into_receipts_no_larger_than_a_kit_message() -> None:
    """200 refused 500-reading messages in one batch (2.8 MB as one receipt) leave as several receipts,
    each at most MAX_KIT_PAYLOAD_BYTES, naming every message once and in order."""
    sent: list[bytes] = []
    sub = _subscriber(sent)
    limited = [ReadingOutcome(rejected="rate_limited")] * 500
    entries = [ReceiptEntry(seq=seq, readings=limited) for seq in range(200)]
    sub._publish_receipt("vaktrom/v1/kits/K1/receipts", "K1", datetime.now(UTC), entries)
    assert len(sent) > 1
    assert all(len(payload) <= MAX_KIT_PAYLOAD_BYTES for payload in sent)
    decoded = [msgspec.json.decode(p, type=DeliveryReceipt) for p in sent]
    assert [m.seq for r in decoded for m in r.messages] == list(range(200))


def test_a_small_batch_leaves_as_one_receipt() -> None:
    """The usual case: one receipt, encoded once."""
    sent: list[bytes] = []
    sub = _subscriber(sent)
    entries = [ReceiptEntry(seq=seq, readings=[ReadingOutcome(id="c" * 32)]) for seq in range(50)]
    sub._publish_receipt("vaktrom/v1/kits/K1/receipts", "K1", datetime.now(UTC), entries)
    assert len(sent) == 1


@pytest.mark.parametrize(
    ("size", "reason"), [(MAX_KIT_PAYLOAD_BYTES - 100, "schema"), (1_000_000, "too_large")]
)
def test_a_refused_message_listing_thousands_of_readings_gets_a_receipt_within_the_broker_limit(
    size: int, reason: str
) -> None:
    """A message that fails the contract but whose `readings` lists 30,000 (or, over the size limit,
    500,000) entries is answered for at most MAX_READINGS_PER_MESSAGE readings: one outcome each made
    a 1 MB (17 MB) receipt, over the broker's packet limit, which disconnects the bridge for every
    kit, again at each resend after reconnecting."""
    payload = b'{"seq":7,"readings":[' + b",".join([b"0"] * (size // 2 - 20)) + b"]}"
    outcome = _normaliser().readings(TOPIC, KIT, payload, NOW)
    assert outcome.receipt is not None
    assert outcome.receipt.seq == 7
    assert {o.rejected for o in outcome.receipt.readings} == {reason}
    assert len(outcome.receipt.readings) == MAX_READINGS_PER_MESSAGE
    sent: list[bytes] = []
    _subscriber(sent)._publish_receipt(f"vaktrom/v1/kits/{KIT}/receipts", KIT, NOW, [outcome.receipt])
    assert all(len(p) <= MAX_KIT_PAYLOAD_BYTES for p in sent)
