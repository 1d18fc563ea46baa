"""The ledger accounts for every reading: confirmed, unconfirmed, dropped or deliberately broken."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from gateway_sim.ledger import Ledger
from gateway_sim.messages import Message, Reading, decode_receipt


def _message(kit: str, seq: int, n: int = 2, label: str | None = None) -> Message:
    readings = tuple(
        Reading(f"{kit}-OX", m, 97.0, "%", "2026-11-01T08:00:00+01:00") for m in ("spo2", "pulse")[:n]
    )
    return Message(kit, seq, "readings", b"{}", readings, label=label)


def test_every_reading_gets_one_status_and_the_digest_covers_the_confirmed(tmp_path: Path) -> None:
    """Confirmed, unconfirmed, broken and dropped add up to what was composed; duplicates add nothing."""
    ledger = Ledger(confirm="puback")
    confirmed, pending, broken, dropped = (
        _message("K1", 1),
        _message("K1", 2),
        _message("K1", 3, label="malformed"),
        _message("K2", 1),
    )
    duplicate = _message("K1", 1, label="duplicate")
    for m in (confirmed, pending, broken, dropped, duplicate):
        ledger.composed(m)
    confirmed.settled = True
    ledger.drop(dropped)
    summary = ledger.write(tmp_path / "ledger.json", {"command": "test"}, detail=True)
    assert summary["readings"] == {"total": 8, "confirmed": 2, "unconfirmed": 2, "broken": 2, "dropped": 2}
    keys = sorted(["K1/1/0", "K1/1/1"])
    assert summary["confirmed"]["sha256"] == hashlib.sha256("\n".join(keys).encode()).hexdigest()
    assert summary["faults"] == {"duplicate": 1, "malformed": 1, "readings_malformed": 2}
    rows = [json.loads(line) for line in (tmp_path / "ledger.readings.jsonl").read_text().splitlines()]
    assert [r[10] for r in rows] == [
        "confirmed",
        "confirmed",
        "unconfirmed",
        "unconfirmed",
        "broken",
        "broken",
        "dropped",
        "dropped",
    ]
    assert json.loads((tmp_path / "ledger.json").read_text())["per_kit"]["K2"]["spo2"] == {"dropped": 1}


def test_receipt_mode_keys_the_digest_by_measurement_id(tmp_path: Path) -> None:
    """With receipts, the ids the bridge named are the ledger's keys, and rejections are counted."""
    ledger = Ledger(confirm="receipt")
    m = _message("K1", 1)
    ledger.composed(m)
    m.outcomes = [("id", "a" * 32), ("rejected", "implausible")]
    m.settled = True
    ledger.settled(m, 0.01)
    summary = ledger.write(tmp_path / "ledger.json", {}, detail=False)
    assert summary["confirmed"]["key"] == "measurement id"
    assert summary["confirmed"]["stored_ids"] == 1
    assert summary["rejections_by_reason"] == {"implausible": 1}
    assert not (tmp_path / "ledger.readings.jsonl").exists()


def test_receipts_decode_and_garbage_does_not() -> None:
    """A receipt from the published schema decodes to (kit, [(seq, outcomes)]); anything else to None."""
    payload = json.dumps(
        {
            "schema": "vaktrom.receipt.v1",
            "kit": "K1",
            "at": "2026-11-01T08:00:00Z",
            "messages": [{"seq": 4, "readings": [{"id": "b" * 32}, {"rejected": "unit_not_accepted"}]}],
        }
    ).encode()
    assert decode_receipt(payload) == ("K1", [(4, [("id", "b" * 32), ("rejected", "unit_not_accepted")])])
    assert decode_receipt(b"{not json") is None
    assert decode_receipt(b'{"schema": "vaktrom.kit-reading.v1"}') is None
