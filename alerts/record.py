"""The FHIR R4 document a nurse's resolution of an alert puts into the patient's record (issue #33).

`build_record_document` is a pure function: everything it writes comes from its arguments, so the
same resolution always gives the same document (the outbox stores its exact bytes once, and every
retry sends those). The document is a `Bundle` of type `document`:

    Composition   (first entry) status final, LOINC 34746-8 "Nurse Note"; subject the Patient,
                  author the Practitioner, date the resolution time; three sections:
                    finding   the alert as a DetectedIssue: rule, severity, value, baseline, source
                    readings  the patient's readings around it (Observations built by the archive's
                              FHIR export, `streams.archive.fhir`), LOINC 8716-3 "Vital signs"
                    note      the nurse's note and the resolution code
    Patient       the pseudonym as an identifier, nothing else (no name, no birth date)
    Practitioner  the nurse: her user name as an identifier and her display name
    DetectedIssue the finding, with the readings that triggered it as evidence and the resolution as
                  its mitigation
    Observation   one per reading (a cuff's two pressures as one blood-pressure panel)

Every reference in it is an `urn:uuid:` that another entry's fullUrl carries (references by
identifier to devices stay identifiers, as in the archive's export). `Bundle.identifier` is the
outbox's document id, which receivers deduplicate on.
"""

from __future__ import annotations

import html
import json
import re
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from streams.archive.fhir import PATIENT_SYSTEM, bundle_json, to_bundle

__all__ = [
    "DOCUMENT_SYSTEM",
    "RESOLUTION_SYSTEM",
    "USER_SYSTEM",
    "build_record_document",
    "document_bytes",
    "safe_text",
]

LOINC = "http://loinc.org"
DOCUMENT_SYSTEM = "urn:vaktrom:record-document"
USER_SYSTEM = "urn:vaktrom:user"
RULE_SYSTEM = "urn:vaktrom:clinical-rule"
RESOLUTION_SYSTEM = "urn:vaktrom:alert-resolution"
EPISODE_SYSTEM = "urn:vaktrom:alert-episode"
_XHTML = "http://www.w3.org/1999/xhtml"
# What free text may not carry into the document: characters outside XML 1.0's set (the narrative is
# XHTML; a pasted VT, ESC or U+FFFE makes it unparsable, lone surrogates cannot be encoded) and the
# bidirectional embeddings, overrides and isolates (U+202A-202E, U+2066-2069), which make the record
# display text other than what it holds. Each is replaced by U+FFFD, so the reader sees something was.
_UNSAFE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]|[\u202a-\u202e\u2066-\u2069]")
# The centre's severities on DetectedIssue's scale (high | moderate | low).
_SEVERITY = {"red": "high", "yellow": "moderate", "info": "low"}


def build_record_document(
    *,
    document_id: str,
    resolved_at: datetime,
    alert: Mapping[str, Any],
    readings: Iterable[Any],
    nurse: str,
    nurse_name: str,
    resolution: str,
    resolution_display: str,
    note: str,
) -> dict[str, Any]:
    """The record document of one resolution, as a JSON-ready dict.

    `alert` has the alert row's fields (episode_id, patient_id, rule_id, rule_source, metric,
    severity, explanation, opened_at, and `event`, the stored alert event with worst, latest,
    baseline and threshold); `readings` are objects with the fields of `streams.archive.read.Reading`.
    """
    doc = uuid.UUID(document_id)
    patient_id = str(alert["patient_id"])
    patient_url = _urn(doc, "patient")
    nurse_url = _urn(doc, "practitioner")
    issue_url = _urn(doc, "finding")
    composition_url = _urn(doc, "composition")
    observations = _observations(readings, patient_id=patient_id, patient_url=patient_url)
    present = {entry["fullUrl"] for entry in observations}
    event: Mapping[str, Any] = alert.get("event") or {}
    evidence = [
        url
        for key in ("worst", "latest")
        if (found := event.get(key))
        and (url := f"urn:uuid:{_measurement_uuid(found['measurement_id'])}") in present
    ]
    resolved = _instant(resolved_at)
    resolution_concept = {
        "coding": [{"system": RESOLUTION_SYSTEM, "code": resolution, "display": resolution_display}],
        "text": resolution_display,
    }
    issue = _detected_issue(
        alert, event=event, patient_url=patient_url, nurse_url=nurse_url, evidence=sorted(set(evidence)),
        resolved=resolved, resolution=resolution_concept,
    )  # fmt: skip
    composition = _composition(
        doc, alert=alert, event=event, resolved=resolved, patient_url=patient_url, nurse_url=nurse_url,
        nurse_name=nurse_name, issue_url=issue_url, observations=observations, note=note,
        resolution_display=resolution_display,
    )  # fmt: skip
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": PATIENT_SYSTEM, "value": patient_id}],
        "active": True,
    }
    practitioner = {
        "resourceType": "Practitioner",
        "identifier": [{"system": USER_SYSTEM, "value": nurse}],
        "name": [{"text": nurse_name or nurse}],
    }
    return _cleaned_document(
        {
            "resourceType": "Bundle",
            "identifier": {"system": DOCUMENT_SYSTEM, "value": f"urn:uuid:{doc}"},
            "type": "document",
            "timestamp": resolved,
            "entry": [
                {"fullUrl": composition_url, "resource": composition},
                {"fullUrl": patient_url, "resource": patient},
                {"fullUrl": nurse_url, "resource": practitioner},
                {"fullUrl": issue_url, "resource": issue},
                *observations,
            ],
        }
    )


def document_bytes(document: Mapping[str, Any]) -> bytes:
    """The exact bytes that are stored, signed and sent (compact UTF-8 JSON)."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _composition(
    doc: uuid.UUID,
    *,
    alert: Mapping[str, Any],
    event: Mapping[str, Any],
    resolved: str,
    patient_url: str,
    nurse_url: str,
    nurse_name: str,
    issue_url: str,
    observations: list[dict[str, Any]],
    note: str,
    resolution_display: str,
) -> dict[str, Any]:
    finding = _finding_lines(alert, event)
    listed = [_reading_line(entry["resource"]) for entry in observations]
    note_lines = [f"Resolution: {resolution_display}", f"Note: {note}" if note else "No note."]
    title = f"Response centre: alert {alert['rule_id']} resolved"
    return {
        "resourceType": "Composition",
        "identifier": {"system": DOCUMENT_SYSTEM, "value": f"urn:uuid:{doc}"},
        "text": {"status": "generated", "div": _div([title, f"Resolved by {nurse_name}", *finding])},
        "status": "final",
        "type": {"coding": [{"system": LOINC, "code": "34746-8", "display": "Nurse Note"}]},
        "subject": {"reference": patient_url},
        "date": resolved,
        "author": [{"reference": nurse_url, "display": nurse_name}],
        "title": title,
        "section": [
            {
                "title": "Finding",
                "text": {"status": "generated", "div": _div(finding)},
                "entry": [{"reference": issue_url}],
            },
            {
                "title": "Readings around the finding",
                "code": {"coding": [{"system": LOINC, "code": "8716-3", "display": "Vital signs"}]},
                "text": {"status": "generated", "div": _div(listed or ["No readings in the period."])},
                **({"entry": [{"reference": e["fullUrl"]} for e in observations]} if observations else {}),
            },
            {
                "title": "Nurse's note and resolution",
                "code": {"coding": [{"system": LOINC, "code": "34746-8", "display": "Nurse Note"}]},
                "text": {"status": "generated", "div": _div(note_lines)},
            },
        ],
    }


def _detected_issue(
    alert: Mapping[str, Any],
    *,
    event: Mapping[str, Any],
    patient_url: str,
    nurse_url: str,
    evidence: list[str],
    resolved: str,
    resolution: dict[str, Any],
) -> dict[str, Any]:
    issue: dict[str, Any] = {
        "resourceType": "DetectedIssue",
        "identifier": [{"system": EPISODE_SYSTEM, "value": str(alert["episode_id"])}],
        "status": "final",
        "code": {
            "coding": [{"system": RULE_SYSTEM, "code": str(alert["rule_id"])}],
            "text": str(alert["rule_id"]),
        },
        "severity": _SEVERITY.get(str(alert["severity"]), "low"),
        "patient": {"reference": patient_url},
        "identifiedDateTime": _instant(alert["opened_at"]),
        "detail": " ".join(_finding_lines(alert, event)),
        "mitigation": [{"action": resolution, "date": resolved, "author": {"reference": nurse_url}}],
    }
    if evidence:
        issue["evidence"] = [{"detail": [{"reference": url} for url in evidence]}]
    return issue


def _finding_lines(alert: Mapping[str, Any], event: Mapping[str, Any]) -> list[str]:
    lines = [
        f"Rule {alert['rule_id']} ({alert['severity']}): {alert['explanation']}",
        f"Source: {alert['rule_source']}",
    ]
    worst = event.get("worst")
    if worst:
        value = "no value" if worst.get("value") is None else f"{worst['value']:g}"
        flag = f" ({worst['flag']})" if worst.get("flag") else ""
        lines.append(f"Value: {value} {worst['unit']}{flag} at {worst['measured_at']}")
    baseline = event.get("baseline")
    if baseline:
        lines.append(f"Baseline: {baseline['value']:g} {baseline['unit']} ({baseline['method']})")
    threshold = event.get("threshold")
    if threshold:
        window = f" within {threshold['window']}" if threshold.get("window") else ""
        lines.append(f"Threshold: {threshold['op']} {threshold['value']:g} {threshold['unit']}{window}")
    return lines


def _observations(readings: Iterable[Any], *, patient_id: str, patient_url: str) -> list[dict[str, Any]]:
    """The archive's Observations, their subject pointed at the document's Patient entry."""
    exported = json.loads(bundle_json(to_bundle(readings, patient_id=patient_id)))
    entries: list[dict[str, Any]] = exported.get("entry", [])
    for entry in entries:
        entry["resource"]["subject"] = {"reference": patient_url, **entry["resource"]["subject"]}
    return entries


def _reading_line(observation: Mapping[str, Any]) -> str:
    when = observation.get("effectiveDateTime", "")
    what = observation.get("code", {}).get("text", "")
    parts = [observation.get("valueQuantity")] if "valueQuantity" in observation else []
    parts += [c.get("valueQuantity") for c in observation.get("component", [])]
    values = "/".join(_quantity_text(q) for q in parts if q)
    return f"{when} {what}: {values}"


def _quantity_text(quantity: Mapping[str, Any]) -> str:
    value = quantity.get("value")
    shown = "" if value is None else f"{value:g}"
    return f"{quantity.get('comparator', '')}{shown} {quantity.get('unit', '')}".strip()


def _div(lines: Iterable[str]) -> str:
    body = "".join(f"<p>{html.escape(line, quote=False)}</p>" for line in lines)
    return f'<div xmlns="{_XHTML}">{body}</div>'


def safe_text(text: str) -> str:
    """`text` with the characters a record document must not carry replaced by U+FFFD."""
    return _UNSAFE.sub("\ufffd", text)


def _cleaned_document(document: dict[str, Any]) -> dict[str, Any]:
    return {safe_text(k): _cleaned(v) for k, v in document.items()}


def _cleaned(value: Any) -> Any:
    """Every string in a JSON-ready structure made safe (the note, names, explanations, narrative)."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, dict):
        return {safe_text(k): _cleaned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cleaned(v) for v in value]
    return value


def _urn(doc: uuid.UUID, name: str) -> str:
    return f"urn:uuid:{uuid.uuid5(doc, name)}"


def _measurement_uuid(measurement_id: str) -> str:
    h = measurement_id
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def _instant(moment: datetime | str) -> str:
    if isinstance(moment, str):
        return moment
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
