"""Pure builders of the FHIR R4 resources the API returns: no database, no HTTP.

Observations are the archive's own (`streams.archive.fhir`: vital-signs profiles, LOINC, UCUM, the
blood-pressure panel); here they only gain a literal `subject.reference` to the API's Patient.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any

from streams.archive.fhir import PATIENT_SYSTEM, to_bundle

__all__ = [
    "ALERT_SYSTEM",
    "FHIR_JSON",
    "NATIONAL_ID_SYSTEM",
    "PATIENT_SYSTEM",
    "RULE_SYSTEM",
    "capability_statement",
    "flag",
    "observations",
    "operation_outcome",
    "patient",
    "searchset",
]

FHIR_JSON = "application/fhir+json"
ALERT_SYSTEM = "urn:vaktrom:alert-episode"
RULE_SYSTEM = "urn:vaktrom:rule"
SEVERITY_SYSTEM = "urn:vaktrom:severity"
# The Norwegian national identity number (fødselsnummer) as its OID names it.
NATIONAL_ID_SYSTEM = "urn:oid:2.16.578.1.12.4.1.4.1"
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
CLOSED_STATES = frozenset({"resolved", "closed", "acknowledged"})

# What the CapabilityStatement says of each resource type: interactions, search parameters.
_PATIENT_REF = ("patient", "reference", "Patient/PSEUDONYM (or the pseudonym)")
SEARCHES: dict[str, tuple[tuple[str, ...], list[tuple[str, str, str]]]] = {
    "Patient": (
        ("read", "search-type"),
        [("_id", "token", "the pseudonym"), ("identifier", "token", f"{PATIENT_SYSTEM}|PSEUDONYM")],
    ),
    "Observation": (
        ("read", "search-type"),
        [
            ("patient", "reference", "required: Patient/PSEUDONYM (or the pseudonym)"),
            ("code", "token", "LOINC codes, comma-separated (http://loinc.org|CODE or CODE)"),
            ("date", "date", "effective time with ge, gt, le, lt (or none: within that date); repeatable"),
        ],
    ),
    "Flag": (("read", "search-type"), [_PATIENT_REF, ("status", "token", "active or inactive")]),
    "Device": (("read", "search-type"), [("patient", "reference", "required: " + _PATIENT_REF[2])]),
    "QuestionnaireResponse": (("search-type",), [("patient", "reference", "required: " + _PATIENT_REF[2])]),
    "Questionnaire": (("search-type",), []),
}
_VITAL_SIGNS = ["vitalsigns", "bodyweight", "heartrate", "oxygensat", "bodytemp", "bp"]


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def capability_statement(*, base_url: str, now: datetime) -> dict[str, Any]:
    """What this server offers (`SEARCHES`), JSON only."""
    resources = []
    for kind, (interactions, params) in SEARCHES.items():
        entry: dict[str, Any] = {
            "type": kind,
            "interaction": [{"code": code} for code in interactions],
        }
        if params:
            entry["searchParam"] = [
                {"name": name, "type": type_, "documentation": doc} for name, type_, doc in params
            ]
        if kind == "Observation":
            entry["supportedProfile"] = [f"http://hl7.org/fhir/StructureDefinition/{p}" for p in _VITAL_SIGNS]
        resources.append(entry)
    resources.append(
        {
            "type": "Group",
            "documentation": "A team, for the bulk export only: GET /fhir/Group/TEAM/$export with "
            "Prefer: respond-async (FHIR Bulk Data), NDJSON files of the team's patients.",
            "operation": [
                {
                    "name": "export",
                    "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
                }
            ],
        }
    )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": _instant(now),
        "publisher": "Vaktrom",
        "kind": "instance",
        "software": {"name": "Vaktrom response centre"},
        "implementation": {"description": "Vaktrom response centre FHIR API", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": [FHIR_JSON],
        "rest": [
            {
                "mode": "server",
                "documentation": "Read-only. Every request needs Authorization: Bearer TOKEN; a caller "
                "sees the patients of their own team only (another team's answer 404).",
                "security": {
                    "cors": False,
                    "description": "Bearer tokens from `python -m alerts.admin token USER`.",
                },
                "resource": resources,
            }
        ],
    }


def patient(
    patient_id: str,
    *,
    active: bool,
    name: str | None = None,
    birth_date: date | None = None,
    national_id: str | None = None,
) -> dict[str, Any]:
    """A Patient by pseudonym; the name, birth date and national id only when given (the caller's
    role may see the identity)."""
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": patient_id,
        "identifier": [{"use": "secondary", "system": PATIENT_SYSTEM, "value": patient_id}],
        "active": active,
    }
    if national_id:
        resource["identifier"].append({"use": "official", "system": NATIONAL_ID_SYSTEM, "value": national_id})
    if name:
        resource["name"] = [{"text": name}]
    if birth_date is not None:
        resource["birthDate"] = birth_date.isoformat()
    return resource


def observations(readings: Iterable[Any], *, patient_id: str) -> list[dict[str, Any]]:
    """The readings (`streams.archive.read.Reading`) as the archive's Observations, a cuff's two
    pressures as one blood-pressure panel, each with `subject.reference` to Patient/pseudonym."""
    bundle = to_bundle(readings, patient_id=patient_id)
    found = []
    for entry in bundle.entry or []:
        resource = entry.resource.model_dump(mode="json", exclude_none=True)  # type: ignore[union-attr]
        resource["subject"]["reference"] = f"Patient/{patient_id}"
        found.append(resource)
    return found


def flag(alert: dict[str, Any]) -> dict[str, Any]:
    """An alert episode as a clinical Flag: active while open, inactive once resolved or closed."""
    open_ = alert["state"] not in CLOSED_STATES
    period: dict[str, str] = {"start": _instant(alert["opened_at"])}
    if not open_ and alert.get("closed_at") is not None:
        period["end"] = _instant(alert["closed_at"])
    return {
        "resourceType": "Flag",
        "id": alert["episode_id"],
        "identifier": [{"system": ALERT_SYSTEM, "value": alert["episode_id"]}],
        "status": "active" if open_ else "inactive",
        "category": [{"coding": [{"system": FLAG_CATEGORY, "code": "clinical", "display": "Clinical"}]}],
        "code": {
            "coding": [
                {"system": RULE_SYSTEM, "code": alert["rule_id"]},
                {"system": SEVERITY_SYSTEM, "code": alert["severity"]},
            ],
            "text": alert["explanation"],
        },
        "subject": {
            "reference": f"Patient/{alert['patient_id']}",
            "identifier": {"system": PATIENT_SYSTEM, "value": alert["patient_id"]},
        },
        "period": period,
    }


def searchset(resources: Sequence[dict[str, Any]], *, self_url: str, next_url: str | None) -> dict[str, Any]:
    """A searchset Bundle of `resources` (all matches), with its self and next links."""
    links = [{"relation": "self", "url": self_url}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    base = self_url.split("/fhir/", 1)[0] + "/fhir/"
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": links,
        "entry": [
            {
                "fullUrl": f"{base}{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }


def operation_outcome(message: str, *, code: str = "invalid", severity: str = "error") -> dict[str, Any]:
    """An OperationOutcome with one issue: `code` from the FHIR issue-type value set."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": message}],
    }
