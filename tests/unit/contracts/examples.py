"""One good example payload of each contract kind, as JSON-ready dicts."""

from __future__ import annotations

from typing import Any

MID = "0123456789abcdef0123456789abcdef"

GOOD: dict[str, dict[str, Any]] = {
    "kit-reading.v1": {
        "schema": "vaktrom.kit-reading.v1",
        "kit": "KIT-000123",
        "seq": 41,
        "sent_at": "2026-11-22T07:31:02+01:00",
        "readings": [
            {
                "device": "SC-445",
                "metric": "body_weight",
                "value": 82.3,
                "unit": "kg",
                "measured_at": "2026-11-22T07:31:00+01:00",
            },
            {
                "device": "GM-12",
                "metric": "glucose",
                "unit": "mmol/L",
                "flag": "HI",
                "measured_at": "2026-11-22T07:40:00+01:00",
            },
        ],
    },
    "kit-status.v1": {
        "schema": "vaktrom.kit-status.v1",
        "kit": "KIT-000123",
        "state": "offline",
        "at": "2026-11-22T07:31:00Z",
        "queued": 3,
        "battery": 71.5,
    },
    "receipt.v1": {
        "schema": "vaktrom.receipt.v1",
        "kit": "KIT-000123",
        "at": "2026-11-22T07:31:01Z",
        "messages": [{"seq": 41, "readings": [{"id": MID}, {"rejected": "implausible"}]}],
    },
    "measurement.v1": {
        "schema": "vaktrom.measurement.v1",
        "measurement_id": MID,
        "patient_id": "P-7f3a",
        "kit_id": "KIT-000123",
        "device_id": "GM-12",
        "metric": "glucose",
        "loinc": "15074-8",
        "value": 3.885,
        "unit": "mmol/L",
        "reported_value": 70.0,
        "reported_unit": "mg/dL",
        "measured_at": "2026-11-22T06:31:00Z",
        "received_at": "2026-11-22T06:31:01.250Z",
        "kit_seq": 41,
        "trace": {"kit_sent": "2026-11-22T06:31:01Z", "bridge_received": "2026-11-22T06:31:01.250Z"},
    },
    "rejection.v1": {
        "schema": "vaktrom.rejection.v1",
        "rejection_id": MID,
        "reason": "unit_not_accepted",
        "detail": "temperature 98.6 reported as Cel is outside 32-42 Cel; probably Fahrenheit (37.0 Cel)",
        "source_topic": "vaktrom/v1/kits/KIT-000123/readings",
        "received_at": "2026-11-22T06:31:01Z",
        "kit_id": "KIT-000123",
        "reading_index": 0,
        "raw_excerpt": "{...}",
        "raw_size": 180,
    },
    "kit-status-event.v1": {
        "schema": "vaktrom.kit-status-event.v1",
        "kit_id": "KIT-000123",
        "patient_id": "P-7f3a",
        "state": "online",
        "at": "2026-11-22T06:31:00Z",
        "received_at": "2026-11-22T06:31:01Z",
    },
    "alert.v1": {
        "schema": "vaktrom.alert.v1",
        "episode_id": MID,
        "version": 2,
        "change": "updated",
        "patient_id": "P-7f3a",
        "rule_id": "HF-1",
        "rule_source": "ESC HFA patient guidance",
        "metric": "body_weight",
        "severity": "yellow",
        "explanation": "Weight 82.3 kg, +2.3 kg since 19 Nov (3 days); rule HF-1: > 2 kg in 3 days",
        "opened_at": "2026-11-21T06:30:00Z",
        "last_seen_at": "2026-11-22T06:31:00Z",
        "count": 2,
        "latest": {
            "measurement_id": MID,
            "metric": "body_weight",
            "value": 82.3,
            "unit": "kg",
            "measured_at": "2026-11-22T06:31:00Z",
        },
        "baseline": {"method": "earliest_in_72h", "value": 80.0, "unit": "kg", "readings": 3},
        "threshold": {"op": ">", "value": 2.0, "unit": "kg", "window": "72h"},
        "emitted_at": "2026-11-22T06:31:01.300Z",
    },
    "careplan.v1": {
        "schema": "vaktrom.careplan.v1",
        "patient_id": "P-7f3a",
        "version": 3,
        "condition": "copd",
        "team_id": "oslo-nord",
        "spo2_scale": 2,
        "expected": [{"metric": "spo2", "windows": [{"start": "07:00", "end": "10:00"}]}],
        "thresholds": {"RS-2": {"points": 4.0}},
        "rules_off": ["RS-6"],
        "changed_at": "2026-11-20T12:00:00Z",
        "changed_by": "dr.hansen",
        "reason": "prescribed 88-92 % target",
    },
    "quarantined.v1": {
        "schema": "vaktrom.quarantined.v1",
        "stage": "archive",
        "reason": "database_refused",
        "detail": "the database refused it: invalid byte sequence for encoding UTF8: 0x00",
        "source_topic": "vaktrom.rejections.v1",
        "partition": 2,
        "offset": 4711,
        "raw": "eyJtZXRyaWMiOiAic3BvMlx1MDAwMCJ9",
        "raw_size": 24,
        "quarantined_at": "2026-11-22T06:31:02Z",
    },
    "kit-answers.v1": {
        "schema": "vaktrom.kit-answers.v1",
        "kit": "KIT-000123",
        "seq": 42,
        "sent_at": "2026-11-22T08:02:00+01:00",
        "responses": [
            {
                "id": "QR-20261122-1",
                "questionnaire": "hf-daily",
                "version": "1",
                "status": "completed",
                "authored": "2026-11-22T08:01:00+01:00",
                "item": [
                    {"linkId": "breathless", "answer": [{"valueCoding": {"code": "worse"}}]},
                    {"linkId": "breathless-lying-flat", "answer": [{"valueBoolean": False}]},
                    {"linkId": "ankle-swelling", "answer": [{"valueCoding": {"code": "same"}}]},
                    {"linkId": "dizzy", "answer": [{"valueBoolean": True}]},
                ],
            },
            {
                "id": "QR-20261122-2",
                "questionnaire": "contact-request",
                "version": "1",
                "authored": "2026-11-22T08:03:00+01:00",
            },
        ],
    },
    "answer.v1": {
        "schema": "vaktrom.answer.v1",
        "answer_id": MID,
        "patient_id": "P-7f3a",
        "kit_id": "KIT-000123",
        "questionnaire": "hf-daily",
        "version": "1",
        "authored": "2026-11-22T07:01:00Z",
        "received_at": "2026-11-22T07:02:00.250Z",
        "items": [
            {"link_id": "breathless", "code": "worse"},
            {"link_id": "breathless-lying-flat", "boolean": False},
            {"link_id": "ankle-swelling", "code": "same"},
            {"link_id": "dizzy", "boolean": True},
        ],
        "score": 2,
        "worsening": ["breathless", "dizzy"],
        "kit_seq": 42,
    },
    "kit-command.v1": {
        "schema": "vaktrom.kit-command.v1",
        "kit": "KIT-000123",
        "command_id": MID,
        "kind": "reminder",
        "text": "Please weigh yourself now.",
        "metric": "body_weight",
        "sent_at": "2026-11-22T09:00:00+00:00",
        "expires_at": "2026-11-22T21:00:00+00:00",
    },
    "kit-command-request.v1": {
        "schema": "vaktrom.kit-command-request.v1",
        "command_id": MID,
        "patient_id": "P-1",
        "kind": "message",
        "text": "We saw your weight. Call us if you feel breathless.",
        "sent_at": "2026-11-22T09:00:00+00:00",
        "expires_at": "2026-11-23T09:00:00+00:00",
        "origin": "alerts",
    },
    "kit-ack.v1": {
        "schema": "vaktrom.kit-ack.v1",
        "kit": "KIT-000123",
        "command_id": MID,
        "shown_at": "2026-11-22T09:00:05+01:00",
    },
    "kit-ack-event.v1": {
        "schema": "vaktrom.kit-ack-event.v1",
        "command_id": MID,
        "kit_id": "KIT-000123",
        "patient_id": "P-1",
        "shown_at": "2026-11-22T08:00:05Z",
        "received_at": "2026-11-22T08:00:06Z",
    },
}

# (schema stem, description, mutation of the good example) -> must be rejected by schema and type
BAD: list[tuple[str, str, dict[str, Any]]] = [
    ("kit-answers.v1", "no responses", {"responses": []}),
    ("kit-answers.v1", "kit id with an MQTT wildcard", {"kit": "KIT/#"}),
    ("kit-answers.v1", "unknown field", {"patient": "Ola Nordmann"}),
    (
        "kit-answers.v1",
        "two answers to one item",
        {
            "responses": [
                {
                    "id": "R",
                    "questionnaire": "hf-daily",
                    "version": "1",
                    "authored": "2026-11-22T08:01:00+01:00",
                    "item": [
                        {"linkId": "dizzy", "answer": [{"valueBoolean": True}, {"valueBoolean": False}]}
                    ],
                }
            ]
        },
    ),
    ("answer.v1", "answer id not hex", {"answer_id": "not-an-id"}),
    ("kit-command.v1", "unknown kind", {"kind": "firmware_update"}),
    ("kit-command.v1", "text too long", {"text": "x" * 501}),
    ("kit-command.v1", "empty text", {"text": ""}),
    ("kit-command-request.v1", "origin that is no stage", {"origin": "kit"}),
    ("kit-ack.v1", "command id that is no id", {"command_id": "../../etc"}),
    ("kit-ack.v1", "unknown field", {"extra": 1}),
    ("kit-reading.v1", "missing readings", {"readings": None}),
    ("kit-reading.v1", "empty readings", {"readings": []}),
    ("kit-reading.v1", "negative seq", {"seq": -1}),
    ("kit-reading.v1", "kit id with an MQTT wildcard", {"kit": "KIT/+"}),
    ("kit-reading.v1", "unknown field", {"firmware_hack": True}),
    ("kit-reading.v1", "wrong schema tag", {"schema": "vaktrom.kit-reading.v0"}),
    (
        "kit-reading.v1",
        "value as a string",
        {
            "readings": [
                {
                    "device": "SC-445",
                    "metric": "body_weight",
                    "value": "82.3",
                    "unit": "kg",
                    "measured_at": "2026-11-22T07:31:00+01:00",
                }
            ]
        },
    ),
    (
        "kit-reading.v1",
        "flag that is not HI/LO",
        {
            "readings": [
                {
                    "device": "GM-12",
                    "metric": "glucose",
                    "unit": "mmol/L",
                    "flag": "ERR",
                    "measured_at": "2026-11-22T07:31:00+01:00",
                }
            ]
        },
    ),
    ("kit-status.v1", "unknown state", {"state": "sleeping"}),
    ("kit-status.v1", "battery over 100", {"battery": 101}),
    ("receipt.v1", "messages missing", {"messages": None}),
    ("measurement.v1", "id not 32 hex digits", {"measurement_id": "xyz"}),
    ("measurement.v1", "unknown metric", {"metric": "blood_pressure"}),
    ("rejection.v1", "unknown reason", {"reason": "because"}),
    ("kit-status-event.v1", "missing kit", {"kit_id": None}),
    ("alert.v1", "unknown severity", {"severity": "green"}),
    ("alert.v1", "version zero", {"version": 0}),
    ("alert.v1", "threshold operator", {"threshold": {"op": "=", "value": 2.0, "unit": "kg"}}),
    ("careplan.v1", "unknown condition", {"condition": "asthma"}),
    (
        "careplan.v1",
        "window time 24:00",
        {"expected": [{"metric": "spo2", "windows": [{"start": "07:00", "end": "24:00"}]}]},
    ),
    ("careplan.v1", "spo2 scale 3", {"spo2_scale": 3}),
    ("quarantined.v1", "unknown reason", {"reason": "because"}),
    ("quarantined.v1", "negative offset", {"offset": -1}),
]


def mutate(stem: str, change: dict[str, Any]) -> dict[str, Any]:
    """The good example of `stem` with `change` applied; a None value removes the field."""
    payload = dict(GOOD[stem])
    for key, value in change.items():
        if value is None:
            payload.pop(key, None)
        else:
            payload[key] = value
    return payload
