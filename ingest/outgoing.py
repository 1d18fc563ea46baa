"""What the bridge sends to Kafka for one message's outcome: a record per measurement, rejection,
answer, kit status and command acknowledgement, each keyed by its patient (a rejection by its kit),
with its schema and W3C trace context in the headers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from ingest.envelope import Outcome

__all__ = ["Record", "records_of"]

_MEASUREMENT_SCHEMA = ("schema", b"vaktrom.measurement.v1")
_REJECTION_SCHEMA = ("schema", b"vaktrom.rejection.v1")
_STATUS_SCHEMA = ("schema", b"vaktrom.kit-status-event.v1")
_ANSWER_SCHEMA = ("schema", b"vaktrom.answer.v1")
_ACK_SCHEMA = ("schema", b"vaktrom.kit-ack-event.v1")


@dataclass(slots=True)  # not frozen: a frozen dataclass sets each field through object.__setattr__
class Record:
    topic: str
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    kind: str  # measurement | rejection | status | answer | ack


def records_of(
    outcome: Outcome, topics: dict[str, str], span: str, encode: Callable[[Any], bytes]
) -> list[Record]:
    """The records of `outcome`, measurements and answers stamped `bridge_produced` now; `span` is
    the bridge's span id for this message (`topics`: the bridge's topic of each kind)."""
    records = []
    produced = datetime.now(UTC)
    for m in outcome.measurements:
        m = msgspec.structs.replace(m, trace=msgspec.structs.replace(m.trace, bridge_produced=produced))  # noqa: PLW2901  (the record as sent)
        headers = [_MEASUREMENT_SCHEMA, ("traceparent", f"00-{m.measurement_id}-{span}-01".encode())]
        records.append(
            Record(topics["measurement"], m.patient_id.encode(), encode(m), headers, "measurement")
        )
    for r in outcome.rejections:
        headers = [_REJECTION_SCHEMA, ("traceparent", f"00-{r.rejection_id}-{span}-01".encode())]
        key = (r.kit_id or "unknown").encode()
        records.append(Record(topics["rejection"], key, encode(r), headers, "rejection"))
    for a in outcome.answers:
        a = msgspec.structs.replace(a, trace=msgspec.structs.replace(a.trace, bridge_produced=produced))  # noqa: PLW2901  (the record as sent)
        headers = [_ANSWER_SCHEMA, ("traceparent", f"00-{a.answer_id}-{span}-01".encode())]
        records.append(Record(topics["answer"], a.patient_id.encode(), encode(a), headers, "answer"))
    if outcome.status is not None:
        s = outcome.status
        key = (s.patient_id or s.kit_id).encode()
        records.append(Record(topics["status"], key, encode(s), [_STATUS_SCHEMA], "status"))
    if outcome.ack is not None:
        ack = outcome.ack
        records.append(Record(topics["ack"], ack.patient_id.encode(), encode(ack), [_ACK_SCHEMA], "ack"))
    return records
