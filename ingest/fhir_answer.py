"""The HTTP answer to a FHIR POST, made from the bridge's receipt for it (pure: no I/O).

The bridge decides what is stored and what is refused, exactly as for a message over MQTT; this
module only says it the way FHIR's HTTP interface does:

    Bundle batch | collection   200, a `batch-response` Bundle with one `response` per entry:
                                "201 Created" + Observation/<measurement id>, "200 OK" for a Device
                                entry (read for references only), or a 4xx status and an
                                OperationOutcome saying why and what to change
    Bundle transaction          200 and a `transaction-response` when every entry was stored;
                                422 and an OperationOutcome naming each refused entry otherwise
                                (the stored ones stay stored: resending them is harmless, since
                                the measurement id makes a repeat recognisable)
    one Observation             201 with its Location, or 4xx and an OperationOutcome
    the whole message refused   400 (malformed, schema, invalid_text), 413 (too_large),
                                429 (rate_limited), 500 (internal_error), 503 (unknown_kit: a kit
                                enrolled a moment ago; try again shortly), with an OperationOutcome
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from contracts import ReadingOutcome, ReceiptEntry, RejectReason

__all__ = ["Answer", "answer", "operation_outcome"]

_HTTP_REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    413: "Content Too Large",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
}
_WHOLE_STATUS = {
    RejectReason.MALFORMED: 400,
    RejectReason.SCHEMA: 400,
    RejectReason.INVALID_TEXT: 400,
    RejectReason.TOO_LARGE: 413,
    RejectReason.RATE_LIMITED: 429,
    RejectReason.INTERNAL_ERROR: 500,
    RejectReason.UNKNOWN_KIT: 503,  # enrolled a moment ago: the bridge knows it within seconds
}
# FHIR's issue-type codes for a refusal reason; anything not named is a business-rule refusal
_ISSUE_CODE = {
    RejectReason.MALFORMED: "structure",
    RejectReason.SCHEMA: "structure",
    RejectReason.INVALID_TEXT: "invalid",
    RejectReason.TOO_LARGE: "too-costly",
    RejectReason.RATE_LIMITED: "throttled",
    RejectReason.UNKNOWN_KIT: "transient",
    RejectReason.INTERNAL_ERROR: "exception",
    RejectReason.UNKNOWN_DEVICE: "not-found",
}
_NOT_A_RESOURCE = object()
_NOT_FHIR = ReadingOutcome(
    rejected=RejectReason.SCHEMA.value, detail="POST a FHIR Bundle of Observations, or one Observation"
)


class _Envelope(msgspec.Struct):
    resourceType: str | None = None  # noqa: N815 (FHIR's spelling)
    type: str | None = None
    entry: list[msgspec.Raw] = []


_envelope = msgspec.json.Decoder(_Envelope)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def operation_outcome(*issues: tuple[str, str, str], expression: list[str] | None = None) -> dict[str, Any]:
    """An OperationOutcome of (severity, FHIR issue-type code, text) issues."""
    listed = []
    for i, (severity, code, text) in enumerate(issues):
        issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": text}
        if expression is not None and i < len(expression) and expression[i]:
            issue["expression"] = [expression[i]]
        listed.append(issue)
    return {"resourceType": "OperationOutcome", "issue": listed}


def _reason(outcome: ReadingOutcome) -> RejectReason:
    try:
        return RejectReason(outcome.rejected or "")
    except ValueError:
        return RejectReason.INTERNAL_ERROR


def _issue(outcome: ReadingOutcome) -> tuple[str, str, str]:
    reason = _reason(outcome)
    words = outcome.detail or "refused"
    return "error", _ISSUE_CODE.get(reason, "business-rule"), f"{reason.value}: {words}"


def _entry_status(outcome: ReadingOutcome) -> int:
    if outcome.rejected is None:
        return 200 if outcome.id is None else 201
    return _WHOLE_STATUS.get(_reason(outcome), 422)


def _status_line(status: int) -> str:
    return f"{status} {_HTTP_REASONS.get(status, '')}".rstrip()


def _whole(outcome: ReadingOutcome) -> Answer:
    status = _WHOLE_STATUS.get(_reason(outcome), 422)
    headers = {"Retry-After": "60" if status == 429 else "10"} if status in (429, 503) else {}
    return Answer(status, operation_outcome(_issue(outcome)), headers)


def _entry_response(outcome: ReadingOutcome) -> dict[str, Any]:
    status = _entry_status(outcome)
    response: dict[str, Any] = {"status": _status_line(status)}
    if outcome.id is not None:
        response["location"] = f"Observation/{outcome.id}"
    if outcome.rejected is not None:
        response["outcome"] = operation_outcome(_issue(outcome))
    return {"response": response}


def answer(payload: bytes, receipt: ReceiptEntry) -> Answer:
    """What to answer the client that POSTed `payload`, which the bridge settled with `receipt`."""
    outcomes = receipt.readings
    try:
        envelope: _Envelope | object = _envelope.decode(payload)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        envelope = _NOT_A_RESOURCE
    whole_refusal = len(outcomes) == 1 and outcomes[0].rejected is not None
    if not isinstance(envelope, _Envelope) or envelope.resourceType not in ("Bundle", "Observation"):
        # the bridge refused it as a whole (it reads the same bytes); say so in its words
        said = [o for o in outcomes if o.rejected is not None]
        return _whole(said[0] if said else _NOT_FHIR)
    if envelope.resourceType == "Observation":
        (outcome,) = outcomes[:1] or [ReadingOutcome(rejected=RejectReason.INTERNAL_ERROR.value)]
        if outcome.rejected is not None:
            return _whole(outcome)
        return Answer(
            201, {"resourceType": "Observation", "id": outcome.id}, {"Location": f"Observation/{outcome.id}"}
        )
    if whole_refusal and (
        len(envelope.entry) != 1
        or _reason(outcomes[0])
        in (RejectReason.RATE_LIMITED, RejectReason.INTERNAL_ERROR, RejectReason.UNKNOWN_KIT)
    ):
        return _whole(outcomes[0])
    if envelope.type == "transaction":
        refused = [(i, o) for i, o in enumerate(outcomes) if o.rejected is not None]
        if refused:
            stored = sum(1 for o in outcomes if o.id is not None)
            issues = [_issue(o) for _, o in refused]
            issues.append(
                (
                    "information",
                    "informational",
                    f"stored: {stored} of the Bundle's entries, and they stay stored (a transaction is "
                    "not rolled back here); correct the refused entries and send the Bundle again: "
                    "the stored ones are recognised as repeats",
                )
            )
            where = [f"Bundle.entry[{i}]" for i, _ in refused]
            return Answer(422, operation_outcome(*issues, expression=where))
    kind = "transaction-response" if envelope.type == "transaction" else "batch-response"
    body = {"resourceType": "Bundle", "type": kind, "entry": [_entry_response(o) for o in outcomes]}
    return Answer(200, body)
