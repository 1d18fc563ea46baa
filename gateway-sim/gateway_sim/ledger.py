"""The ledger: what the simulated kits sent and what became of it, for checking storage against.

Written at the end of a run as two files:
- `ledger.json`: the summary (totals, per kit and metric counts, rates, latency percentiles) and a
  digest of the confirmed readings (sha256 over their sorted keys);
- `ledger.readings.jsonl`: one line per reading (`--ledger-detail full`, the default), as a JSON
  array `[kit, seq, index, device, metric, value, unit, flag, measured_at, label, status, outcome]`.

A reading's `status` is `confirmed` (its delivery receipt arrived, or its PUBACK when the run
confirms by PUBACK), `unconfirmed` (still held by the kit when the run ended), `dropped` (pushed out
of a full kit queue) or `broken` (inside a deliberately malformed or oversized payload). `outcome`
is the measurement id or `rejected:<reason>` from the receipt, or null. `label` marks deliberately
wrong readings (`wrong_unit`, `implausible`). Duplicate resends and status messages are counted,
not listed: they add no reading.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from gateway_sim.messages import Message

__all__ = ["LEDGER_SCHEMA", "Ledger"]

LEDGER_SCHEMA = "vaktrom.sim-ledger.v1"


def _percentiles(samples: list[float]) -> dict[str, float] | None:
    if not samples:
        return None
    values = np.asarray(samples, dtype=np.float64) * 1000.0
    p50, p90, p99, p999 = np.percentile(values, [50, 90, 99, 99.9])
    return {
        "count": len(samples),
        "p50": round(float(p50), 2),
        "p90": round(float(p90), 2),
        "p99": round(float(p99), 2),
        "p99.9": round(float(p999), 2),
        "max": round(float(values.max()), 2),
    }


class Ledger:
    def __init__(self, *, confirm: str) -> None:
        self.confirm = confirm
        self.messages: Counter[str] = Counter()  # composed, published, acked, settled, resent, ...
        self.labels: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()
        self.puback_latency: list[float] = []
        self.receipt_latency: list[float] = []
        self.unmatched_receipts = 0
        self.tracked: list[Message] = []  # messages whose readings the ledger accounts for
        self.dropped: list[Message] = []

    # ------------------------------------------------------------ events
    def composed(self, message: Message) -> None:
        self.messages["composed"] += 1
        self.messages[f"composed_{message.kind}"] += 1
        if message.label is not None:
            self.labels[message.label] += 1
        if message.out_of_order:
            self.labels["out_of_order"] += 1
        if message.kind != "readings" or message.label == "duplicate":
            return
        self.tracked.append(message)
        if message.label is not None:
            self.labels[f"readings_{message.label}"] += len(message.readings)
        for reading in message.readings:
            if reading.label is not None:  # only deliberately wrong readings carry a label: rare
                self.labels[f"readings_{reading.label}"] += 1

    def published(self, message: Message) -> None:
        self.messages["published"] += 1
        if message.attempts > 1:
            self.messages["resent"] += 1

    def acked(self, message: Message, latency: float | None) -> None:
        self.messages["acked"] += 1
        if latency is not None:
            self.puback_latency.append(latency)

    def settled(self, message: Message, receipt_latency: float | None) -> None:
        self.messages["settled"] += 1
        if receipt_latency is not None:
            self.receipt_latency.append(receipt_latency)
        for _kind, value in message.outcomes or ():
            if _kind == "rejected":
                self.rejections[value] += 1

    def drop(self, message: Message) -> None:
        self.messages["dropped"] += 1
        self.dropped.append(message)

    # ------------------------------------------------------------ results
    @staticmethod
    def status(message: Message) -> str:
        if message.label in ("malformed", "oversized"):
            return "broken"
        if message.settled:
            return "confirmed"
        return "unconfirmed"

    def rows(self) -> list[list[Any]]:
        dropped = {id(m) for m in self.dropped}
        out = []
        for message in self.tracked:
            status = "dropped" if id(message) in dropped else self.status(message)
            for i, r in enumerate(message.readings):
                outcome = None
                if message.outcomes is not None and i < len(message.outcomes):
                    kind, value = message.outcomes[i]
                    outcome = value if kind == "id" else f"rejected:{value}"
                out.append(
                    [
                        message.kit,
                        message.seq,
                        i,
                        r.device,
                        r.metric,
                        r.value,
                        r.unit,
                        r.flag,
                        r.measured_at,
                        r.label,
                        status,
                        outcome,
                    ]
                )
        return out

    def summary(self, rows: list[list[Any]], run: dict[str, Any]) -> dict[str, Any]:
        readings: Counter[str] = Counter(row[10] for row in rows)
        confirmed = sorted(
            (row[11] if self.confirm == "receipt" and row[11] else f"{row[0]}/{row[1]}/{row[2]}")
            for row in rows
            if row[10] == "confirmed"
        )
        stored = [
            row[11] for row in rows if row[10] == "confirmed" and row[11] and not row[11].startswith("rej")
        ]
        per_kit: dict[str, dict[str, dict[str, int]]] = {}
        for row in rows:  # per kit and metric: readings by status, and deliberately wrong ones by label
            counts = per_kit.setdefault(row[0], {}).setdefault(row[4], {})
            counts[row[10]] = counts.get(row[10], 0) + 1
            if row[9] is not None:
                counts[row[9]] = counts.get(row[9], 0) + 1
        return {
            "schema": LEDGER_SCHEMA,
            "run": run,
            "confirm": self.confirm,
            "messages": dict(sorted(self.messages.items())),
            "readings": {"total": len(rows), **dict(sorted(readings.items()))},
            "faults": dict(sorted(self.labels.items())),
            "rejections_by_reason": dict(sorted(self.rejections.items())),
            "unmatched_receipts": self.unmatched_receipts,
            "latency_ms": {
                "publish_to_puback": _percentiles(self.puback_latency),
                "publish_to_receipt": _percentiles(self.receipt_latency),
            },
            "confirmed": {
                "count": len(confirmed),
                "key": "measurement id" if self.confirm == "receipt" else "kit/seq/index",
                "sha256": hashlib.sha256("\n".join(confirmed).encode()).hexdigest(),
                "stored_ids": len(stored),
            },
            "per_kit": per_kit,
        }

    def write(self, path: Path, run: dict[str, Any], *, detail: bool) -> dict[str, Any]:
        rows = self.rows()
        summary = self.summary(rows, run)
        path.parent.mkdir(parents=True, exist_ok=True)
        if detail:
            readings_path = path.with_suffix(".readings.jsonl")
            with readings_path.open("w", encoding="utf-8") as out:
                for row in rows:
                    out.write(json.dumps(row, separators=(",", ":")))
                    out.write("\n")
            summary["readings_file"] = readings_path.name
        path.write_text(json.dumps(summary, indent=1, sort_keys=False) + "\n", encoding="utf-8")
        return summary
