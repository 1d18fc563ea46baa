"""The record document of a resolution (alerts/record.py) and its signature (alerts/ehr.py): its
structure as a FHIR document, its references, hostile text, and the start-up checks of its settings."""

from __future__ import annotations

import json
import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fhir.resources.R4B.bundle import Bundle

from alerts.ehr import Signer, verify
from alerts.record import build_record_document, document_bytes
from alerts.settings import AlertsSettings
from runtime.settings import ConfigError
from tests.support.fhir_validator import validate

AT = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
DOC = "6f1c2a9e-0b7d-4c1e-9a35-2d8f0e4b7c11"


@dataclass(frozen=True)
class Reading:
    measurement_id: str
    metric: str
    measured_at: datetime
    value: float | None
    unit: str
    reported_value: float | None
    reported_unit: str
    flag: str | None
    loinc: str
    device_id: str
    kit_id: str
    received_at: datetime


def reading(n: int, metric: str, value: float, unit: str, *, at: datetime, loinc: str) -> Reading:
    mid = f"{n:032x}"
    return Reading(mid, metric, at, value, unit, value, unit, None, loinc, "DEV-1", "KIT-1", at)


READINGS = [
    reading(1, "spo2", 88, "%", at=AT - timedelta(hours=3), loinc="59408-5"),
    reading(2, "bp_systolic", 150, "mm[Hg]", at=AT - timedelta(hours=2), loinc="8480-6"),
    reading(3, "bp_diastolic", 95, "mm[Hg]", at=AT - timedelta(hours=2), loinc="8462-4"),
    reading(4, "pulse", 101, "/min", at=AT - timedelta(hours=2), loinc="8867-4"),
]
ALERT: dict[str, Any] = {
    "episode_id": "a" * 32, "patient_id": "P-0042", "rule_id": "NEWS2-S1", "rule_source": "RCP NEWS2 2017",
    "metric": "spo2", "severity": "red", "explanation": "SpO2 88 %: NEWS2 SpO2 sub-score 3",
    "opened_at": AT - timedelta(hours=3),
    "event": {
        "worst": {"measurement_id": f"{1:032x}", "metric": "spo2", "value": 88, "unit": "%",
                  "measured_at": "2026-11-21T09:00:00Z"},
        "baseline": {"method": "median_mad_14d", "value": 95, "unit": "%"},
        "threshold": {"op": "<=", "value": 91, "unit": "%"},
    },
}  # fmt: skip


def build(note: str = "Called the patient; rested and measured again.", **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "document_id": DOC, "resolved_at": AT, "alert": ALERT, "readings": READINGS, "nurse": "nurse-kari",
        "nurse_name": "Kari Nordmann", "resolution": "contacted_no_action",
        "resolution_display": "Contacted patient, no action", "note": note,
    }  # fmt: skip
    args.update(kw)
    return build_record_document(**args)


def references(node: Any) -> list[str]:
    """Every `reference` string anywhere in a resource."""
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for value in node.values() for r in references(value)]
    if isinstance(node, list):
        return [r for item in node for r in references(item)]
    return []


def test_a_document_bundle_with_the_composition_first() -> None:
    """Bundle type document, with identifier and timestamp (required of documents), and the
    Composition as its first entry, final, with subject, author, date and three sections."""
    doc = build()
    assert doc["resourceType"] == "Bundle"
    assert doc["type"] == "document"
    assert doc["identifier"]["value"] == f"urn:uuid:{DOC}"
    assert doc["timestamp"] == "2026-11-21T12:00:00Z"
    first = doc["entry"][0]["resource"]
    assert first["resourceType"] == "Composition"
    assert first["status"] == "final"
    assert first["date"] == doc["timestamp"]
    assert first["title"]
    assert [s["title"] for s in first["section"]] == [
        "Finding", "Readings around the finding", "Nurse's note and resolution",
    ]  # fmt: skip
    assert all(
        s["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">') for s in first["section"]
    )


def test_every_reference_resolves_inside_the_bundle() -> None:
    """Each `reference` names the fullUrl of an entry, and every entry has a unique fullUrl."""
    doc = build()
    urls = [e["fullUrl"] for e in doc["entry"]]
    assert len(urls) == len(set(urls))
    found = references(doc)
    assert found
    assert set(found) <= set(urls)


def test_subject_author_finding_and_readings() -> None:
    """The subject is the pseudonym (no name anywhere), the author the nurse, the finding carries the
    rule, value, baseline and source with the triggering reading as evidence, the cuff's pressures are
    one panel and the resolution is the finding's mitigation."""
    doc = build()
    by_type: dict[str, list[dict[str, Any]]] = {}
    for entry in doc["entry"]:
        by_type.setdefault(entry["resource"]["resourceType"], []).append(entry)
    patient = by_type["Patient"][0]["resource"]
    assert patient["identifier"] == [{"system": "urn:vaktrom:patient", "value": "P-0042"}]
    assert "name" not in patient
    composition = doc["entry"][0]["resource"]
    assert composition["subject"]["reference"] == by_type["Patient"][0]["fullUrl"]
    assert composition["author"][0]["reference"] == by_type["Practitioner"][0]["fullUrl"]
    issue = by_type["DetectedIssue"][0]["resource"]
    assert issue["severity"] == "high"
    assert issue["code"]["text"] == "NEWS2-S1"
    for words in ("NEWS2-S1", "RCP NEWS2 2017", "Value: 88 %", "Baseline: 95 %", "Threshold: <= 91 %"):
        assert words in issue["detail"]
    spo2_url = f"urn:uuid:{'0' * 8}-0000-0000-0000-{'0' * 11}1"
    assert issue["evidence"] == [{"detail": [{"reference": spo2_url}]}]
    assert issue["mitigation"][0]["action"]["coding"][0]["code"] == "contacted_no_action"
    observations = [e["resource"] for e in by_type["Observation"]]
    assert len(observations) == 3  # SpO2, the blood-pressure panel, the pulse
    assert sum(1 for o in observations if "component" in o) == 1
    assert all(o["subject"]["reference"] == by_type["Patient"][0]["fullUrl"] for o in observations)


def test_the_same_resolution_gives_the_same_bytes() -> None:
    """A pure function: built twice, byte for byte the same (the outbox stores and signs these)."""
    assert document_bytes(build()) == document_bytes(build())
    assert json.loads(document_bytes(build())) == build()


def test_hostile_note_is_text_not_markup() -> None:
    """A note with markup, quotes and control-ish text is escaped in the narrative and kept as it
    was in the structured fields."""
    note = '<script>alert("x")</script> & </div><div>'
    doc = build(note=note)
    section = doc["entry"][0]["resource"]["section"][2]["text"]["div"]
    assert "<script>" not in section
    assert "&lt;script&gt;" in section
    assert "&amp;" in section
    assert section.count("<div") == 1


def test_no_readings_still_a_valid_section() -> None:
    """Without readings the section says so in text and has no empty entry list."""
    doc = build(readings=[])
    section = doc["entry"][0]["resource"]["section"][1]
    assert "entry" not in section
    assert "No readings" in section["text"]["div"]
    assert (
        "evidence"
        not in next(e for e in doc["entry"] if e["resource"]["resourceType"] == "DetectedIssue")["resource"]
    )


def test_signature_verifies_over_the_exact_bytes_only() -> None:
    """The receiver's check passes for the bytes sent and fails for one changed byte, another key,
    or a malformed header."""
    signer = Signer(Ed25519PrivateKey.generate())
    body = document_bytes(build())
    signature = signer.sign(body)
    public = signer.public_pem()
    assert verify(public, body, signature)
    assert not verify(public, body.replace(b"88", b"98", 1), signature)
    assert not verify(Signer(Ed25519PrivateKey.generate()).public_pem(), body, signature)
    for bad in (
        "",
        "ed25519=",
        "ed25519=!!!",
        "sha256=" + signature.removeprefix("ed25519="),
        signature[:-4],
    ):
        assert not verify(public, body, bad)


def _key_file(tmp_path: Path, key: Any) -> Path:
    path = tmp_path / f"{uuid.uuid4().hex}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return path


def test_settings_on_with_a_key_and_off_without_an_endpoint(tmp_path: Path) -> None:
    """No endpoint: off (no signer). An endpoint and an Ed25519 key: on."""
    assert AlertsSettings.from_env({}).ehr_signer is None
    key = _key_file(tmp_path, Ed25519PrivateKey.generate())
    on = AlertsSettings.from_env({"VAKTROM_ALERTS_EHR_URL": "https://ehr.example.org/fhir/Bundle",
                                  "VAKTROM_ALERTS_EHR_SIGNING_KEY": str(key)})  # fmt: skip
    assert on.ehr_signer is not None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"VAKTROM_ALERTS_EHR_URL": "https://ehr.example.org"}, "VAKTROM_ALERTS_EHR_SIGNING_KEY is empty"),
        ({"VAKTROM_ALERTS_EHR_SIGNING_KEY": "/x.pem"}, "VAKTROM_ALERTS_EHR_URL is empty"),
        ({"VAKTROM_ALERTS_EHR_URL": "ftp://ehr", "VAKTROM_ALERTS_EHR_SIGNING_KEY": "/x"}, "http"),
        ({"VAKTROM_ALERTS_EHR_URL": "https://e", "VAKTROM_ALERTS_EHR_SIGNING_KEY": "/nonexistent/k.pem"},
         "cannot read the key file"),
        ({"VAKTROM_ALERTS_EHR_URL": "https://e", "VAKTROM_ALERTS_EHR_SIGNING_KEY": "ec"}, "not an Ed25519"),
        ({"VAKTROM_ALERTS_EHR_URL": "https://e", "VAKTROM_ALERTS_EHR_SIGNING_KEY": "junk"}, "unencrypted"),
        ({"VAKTROM_ALERTS_EHR_GIVE_UP_H": "0"}, "VAKTROM_ALERTS_EHR_GIVE_UP_H=0"),
        ({"VAKTROM_ALERTS_EHR_TIMEOUT_S": "nan"}, "VAKTROM_ALERTS_EHR_TIMEOUT_S"),
    ],
)  # fmt: skip
def test_bad_settings_fail_at_start_up_naming_the_variable(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    """Each mistake is a ConfigError saying which variable and what to do."""
    env = dict(env)
    if env.get("VAKTROM_ALERTS_EHR_SIGNING_KEY") == "ec":
        env["VAKTROM_ALERTS_EHR_SIGNING_KEY"] = str(_key_file(tmp_path, generate_private_key(SECP256R1())))
    elif env.get("VAKTROM_ALERTS_EHR_SIGNING_KEY") == "junk":
        junk = tmp_path / "junk.pem"
        junk.write_text("not a key")
        junk.chmod(0o600)
        env["VAKTROM_ALERTS_EHR_SIGNING_KEY"] = str(junk)
    with pytest.raises(ConfigError, match=message):
        AlertsSettings.from_env(env)


def test_an_openssl_key_is_accepted(tmp_path: Path) -> None:
    """The key the docs tell operators to make (`openssl genpkey -algorithm ed25519`) is read."""
    path = tmp_path / "ehr-signing.pem"
    made = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(path)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.fail(f"openssl could not make an Ed25519 key: {made.stderr.decode()}")
    path.chmod(0o600)  # as the docs say
    signer = Signer.from_file(str(path), env="X")
    assert verify(signer.public_pem(), b"x", signer.sign(b"x"))


def test_the_specification_models_accept_it() -> None:
    """The FHIR models (`fhir.resources`, R4B, the same as R4 for these resources) read the whole
    document without error: each resource has its required elements and types."""
    parsed = Bundle.model_validate(build(note='<b>"quoted"</b>'))
    assert parsed.entry is not None
    assert type(parsed.entry[0].resource).__name__ == "Composition"


def test_the_record_document_passes_the_hapi_validator() -> None:
    """The whole document Bundle is valid R4 as HAPI's validator reads it (a document: Composition
    first, every reference resolved inside it, the bdl- and cmp- invariants), and its SpO2 and
    pulse Observations are valid vital signs of their profiles."""
    document = build()
    assert validate(document) == []
    profiles = {"59408-5": "oxygensat", "8867-4": "heartrate"}
    checked = 0
    for entry in document["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] != "Observation":
            continue
        codes = {c["code"] for c in resource["code"]["coding"]}
        for loinc, profile in profiles.items():
            if loinc in codes:
                assert validate(resource, f"http://hl7.org/fhir/StructureDefinition/{profile}") == [], profile
                checked += 1
    assert checked == 2
