# ruff: noqa: F811  (the fixtures of test_fhir_api, imported by name, are parameters here)
"""The FHIR API against hostile use, on the running service (found by review): a device follows its
patient's move, hostile ids answer an OperationOutcome, an export is not readable once its owner
left the team, and a vanished export file is a 404 outcome, not a bare 500."""

from __future__ import annotations

import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import httpx
import psycopg

from tests.integration.test_fhir_api import (  # noqa: F401  (fixtures)
    World,
    _entries,
    _export,
    _finished,
    _outcome,
    conn,
    service,
    world,
)


def test_held_a_device_follows_its_patients_move(world: World, conn: psycopg.Connection[Any]) -> None:
    """A patient moved to team B takes the kit along: team A no longer reads the device."""
    conn.execute("UPDATE patients SET team_id = %s WHERE patient_id = %s", (world.team_b, world.patient_a))
    _outcome(world.get(f"/fhir/Device/{world.device_a}", world.nurse_a), 404)
    listed_for_b = _entries(world.get("/fhir/Device", world.nurse_b, patient=world.patient_a).json())
    assert [d["id"] for d in listed_for_b] == [world.device_a]
    assert world.get(f"/fhir/Device/{world.device_a}", world.nurse_b).status_code == 200


def test_held_hostile_ids_in_the_path_answer_an_outcome(world: World) -> None:
    for kind in ("Patient", "Flag", "Device"):
        for bad in ("%00", "x" * 5000, "%E2%80%AE", "..%2F..%2Fetc"):
            response = httpx.get(f"{world.url}/fhir/{kind}/{bad}", headers=world.nurse_a, timeout=30)
            assert response.status_code < 500, (kind, bad, response.text[:200])
            assert response.json()["resourceType"] == "OperationOutcome", (kind, bad)


def _job_folder(patient: str) -> Path:
    """The service's folder of the export holding `patient` (same machine, same user)."""
    for folder in Path(tempfile.gettempdir()).glob("vaktrom-export-*"):
        patients = folder / "Patient.ndjson"
        if patients.exists() and patient in patients.read_text():
            return folder
    raise AssertionError(f"no export folder under {tempfile.gettempdir()} holds {patient}")


def test_an_export_is_not_readable_after_its_owner_leaves_the_team(
    world: World, conn: psycopg.Connection[Any]
) -> None:
    """Job visibility is by username only: a nurse moved from team A to team B (same token, the
    Principal's team is read fresh each request) still downloads team A's export."""
    kick_off = _export(world, world.nurse_a, world.team_a)
    assert kick_off.status_code == 202, kick_off.text[:300]
    manifest = _finished(world, kick_off.headers["content-location"], world.nurse_a)
    username = conn.execute(
        "SELECT username FROM sessions WHERE token_hash = sha256(%s::bytea)",
        (world.nurse_a["Authorization"].removeprefix("Bearer ").encode(),),
    ).fetchone()
    assert username is not None
    conn.execute("UPDATE users SET team_id = %s WHERE username = %s", (world.team_b, username[0]))
    assert world.get("/fhir/Patient", world.nurse_a).status_code == 200, "the token still works"
    url = next(f["url"] for f in manifest["output"] if f["type"] == "Patient")
    response = httpx.get(url, headers=world.nurse_a, timeout=30)
    assert world.patient_a not in response.text, "team A's export read by a member of team B"


def test_an_export_file_that_is_gone_answers_an_outcome_not_a_bare_500(world: World) -> None:
    """The files live in /tmp; when they go (expire racing a download, a tmp cleaner, a full disk
    that left them unwritten) FileResponse raises RuntimeError: a plain-text 500, no OperationOutcome.
    Also checks the folder is private."""
    kick_off = _export(world, world.nurse_a, world.team_a)
    manifest = _finished(world, kick_off.headers["content-location"], world.nurse_a)
    folder = _job_folder(world.patient_a)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    shutil.rmtree(folder)
    url = next(f["url"] for f in manifest["output"] if f["type"] == "Patient")
    response = httpx.get(url, headers=world.nurse_a, timeout=30)
    assert response.headers.get("content-type", "").startswith("application/fhir+json"), (
        response.status_code, response.text[:200],
    )  # fmt: skip
    _outcome(response, 404)
