"""The HAPI FHIR validator the FHIR API's tests rely on (tests/support/fhir_validator.py) really
validates: it refuses a broken resource, checks a named profile, and passes a good one."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from streams.archive.fhir import observation
from tests.support.fhir_validator import FhirValidator, ValidatorUnavailableError, validate

BODYWEIGHT = "http://hl7.org/fhir/StructureDefinition/bodyweight"


def _weight() -> dict[str, object]:
    return observation(
        measurement_id="0" * 32, patient_id="p-validator", device_id="scale-1", metric="body_weight",
        reported_value=81.4, reported_unit="kg", flag=None,
        measured_at=datetime(2026, 3, 1, 7, 30, tzinfo=UTC),
        received_at=datetime(2026, 3, 1, 7, 31, tzinfo=UTC),
    ).model_dump(mode="json", exclude_none=True)  # fmt: skip


def test_a_good_weight_passes_base_r4_and_the_bodyweight_profile() -> None:
    """The archive's own body-weight Observation is valid R4 and a valid bodyweight vital sign."""
    assert validate(_weight(), BODYWEIGHT) == []


def test_an_unknown_status_code_is_an_error() -> None:
    """A code outside a required value set is refused (the in-memory terminology check works)."""
    bad = {**_weight(), "status": "bogus"}
    assert any("bogus" in e and e.startswith("ERROR") for e in validate(bad))


def test_a_missing_required_element_is_an_error() -> None:
    """A resource without a required element (Observation.code) is refused."""
    bad = _weight()
    del bad["code"]
    assert any("Observation.code" in e for e in validate(bad))


def test_the_named_profile_is_checked() -> None:
    """A weight claimed to be a heart rate fails the heart-rate profile's fixed LOINC code."""
    errors = validate(_weight(), "http://hl7.org/fhir/StructureDefinition/heartrate")
    assert any("8867-4" in e for e in errors), errors


def test_an_unknown_resource_type_is_an_error() -> None:
    """Garbage is not waved through as valid."""
    assert validate({"resourceType": "NoSuchThing", "id": "x"}) != []


def test_a_validator_without_its_jars_fails_saying_what_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No jars (bootstrap not run): starting fails with a message naming `make bootstrap`; the
    tests that need the validator fail with it rather than being skipped."""
    monkeypatch.setenv("VAKTROM_STATE_DIR", str(tmp_path))
    with pytest.raises(ValidatorUnavailableError, match="make bootstrap"):
        FhirValidator.start()
