"""The FHIR API against hostile use (found by review): exports that outlive their hour, their owner's
team or the pool, search values that parse too loosely."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException
from starlette.requests import Request

from alerts.console import fhir_export
from alerts.console.fhir_api import install_fhir_errors
from alerts.fhir import export, search, source
from streams.archive import read as archive_read


def test_a_finished_export_is_gone_after_keep_even_when_no_new_export_starts(tmp_path: Path) -> None:
    """The docs promise deletion an hour after finishing; `expire` runs only inside `start`, and
    `find` does not look at the age, so with no further kick-off the job (and its files with a whole
    team's data) stays readable and on disk for as long as the process lives."""
    exports = export.Exports()
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "Patient.ndjson").write_text('{"resourceType":"Patient"}\n')
    finished = datetime.now(UTC) - export.KEEP - timedelta(minutes=5)
    job = export.Job(
        job_id="a" * 32, owner="nurse", team_id="t", types=("Patient",), request_url="x",
        started_at=finished, folder=folder, finished_at=finished,
    )  # fmt: skip
    exports._jobs[job.job_id] = job
    assert exports.find(job.job_id, "nurse", "t") is None, "a job older than KEEP is still served"
    assert not folder.exists(), "its files are still on disk"


def test_a_minute_with_a_zone_offset_covers_a_minute() -> None:
    """`date=2026-03-01T12:00+01:00` names a minute; the colon of the offset makes it a second."""
    with_z = search.parse_observation([("patient", "P-A"), ("date", "2026-03-01T12:00Z")])
    with_offset = search.parse_observation([("patient", "P-A"), ("date", "2026-03-01T12:00+01:00")])
    assert with_z.end - with_z.start == timedelta(minutes=1)
    assert with_offset.end - with_offset.start == timedelta(minutes=1)


def test_a_pseudonym_with_a_trailing_newline_is_refused() -> None:
    """`_ID.match` with `$` lets "P-A\\n" through (harmless today: no row matches), use fullmatch."""
    with pytest.raises(search.SearchError):
        search.parse_observation([("patient", "P-A\n")])


def test_running_exports_are_capped_across_users_not_per_user_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each running export holds one of the console's 16 pooled connections (`with ctx.db()` around
    the whole of write_team) for as long as it runs. The cap is 3 per username only: six clinicians
    (or one centre-wide account per kick-off... any six accounts) take every connection, and the
    console's own pages and the alert queue time out (PoolTimeout, 500) for every team."""
    monkeypatch.setattr(export.tempfile, "tempdir", str(tmp_path))  # the job folders: ours only
    exports, release = export.Exports(), threading.Event()
    started = 0
    try:
        for n in range(6):
            for _ in range(export.MAX_JOBS_PER_USER):
                try:
                    exports.start(owner=f"nurse-{n}", team_id="t", types=("Patient",), request_url="x",
                                  run=lambda _job: release.wait(30))  # fmt: skip
                except ValueError:
                    continue
                started += 1
    finally:
        release.set()
    assert started < 16, f"{started} exports running at once, each holding a pooled connection"


def test_export_folders_left_by_a_previous_process_are_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs live in memory only; after a restart or crash their folders (a whole team's record) stay
    in the temporary directory for good: nothing sweeps `vaktrom-export-*` it no longer knows."""
    monkeypatch.setattr(export.tempfile, "tempdir", str(tmp_path))
    orphan = tmp_path / "vaktrom-export-leftover"
    orphan.mkdir(mode=0o700)
    (orphan / "Observation.ndjson").write_text('{"resourceType":"Observation"}\n')
    old = (datetime.now(UTC) - export.KEEP - timedelta(hours=1)).timestamp()
    os.utime(orphan, (old, old))
    export.Exports().expire()
    assert not orphan.exists(), "a previous process's export folder is never deleted"


def test_an_unexpected_error_under_fhir_is_an_operation_outcome_and_elsewhere_stays_plain() -> None:
    """A FHIR client reads OperationOutcomes; a bug that escapes a route under /fhir answered
    Starlette's text/plain "Internal Server Error" before. Elsewhere the answer is unchanged."""
    app = FastAPI()
    install_fhir_errors(app)

    @app.get("/fhir/Boom")
    def fhir_boom() -> None:
        raise RuntimeError("a bug")

    @app.get("/api/v1/boom")
    def api_boom() -> None:
        raise RuntimeError("a bug")

    async def ask() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://c") as client:
            return await client.get("/fhir/Boom"), await client.get("/api/v1/boom")

    fhir, other = asyncio.run(ask())
    assert fhir.status_code == 500
    assert fhir.headers["content-type"].startswith("application/fhir+json")
    body = fhir.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error"
    assert body["issue"][0]["code"] == "exception"
    assert "a bug" not in fhir.text  # the exception's text stays in the log
    assert other.status_code == 500
    assert other.text == "Internal Server Error"


def test_a_cancelled_export_is_unknown_at_once_and_its_files_go_when_its_writer_stops() -> None:
    """DELETE on the status URL: a running job stops counting for its owner's reads at once, keeps
    its place among the running (it still holds a connection) until the writer notices, and then
    its folder is gone; a finished job's folder goes at once. Nobody else can cancel it."""
    exports = export.Exports()
    release = threading.Event()
    noticed = threading.Event()

    def run(job: export.Job) -> None:
        job.path("Patient").write_text("{}\n")
        release.wait(10)
        noticed.set()

    running = exports.start(owner="nurse", team_id="t", types=("Patient",), request_url="x", run=run)
    assert not exports.cancel(running.job_id, "other-nurse", "t")
    assert not exports.cancel(running.job_id, "nurse", "another-team")
    assert exports.cancel(running.job_id, "nurse", "t")
    assert exports.find(running.job_id, "nurse", "t") is None
    assert running.folder.exists()  # the writer is still at it
    assert running.job_id in exports._jobs  # and still counts against the service's cap
    release.set()
    assert noticed.wait(10)
    deadline = time.monotonic() + 10
    while running.folder.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not running.folder.exists()
    assert running.job_id not in exports._jobs

    done = exports.start(owner="nurse", team_id="t", types=("Patient",), request_url="x", run=lambda j: None)
    deadline = time.monotonic() + 10
    while done.finished_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert exports.cancel(done.job_id, "nurse", None)  # a centre-wide caller who started it
    assert not done.folder.exists()
    assert not exports.cancel(done.job_id, "nurse", None)


# Reviewer's reproducers (7fb5f6a..d6b91ba): each failed on that code.
class _RacingExports(export.Exports):
    """Another DELETE of the same job wins between this request's `_job` (find) and its `cancel`,
    as two requests on the thread pool can."""

    def __init__(self) -> None:
        super().__init__()
        self.raced = False

    def cancel(self, job_id: str, owner: str, team_id: str | None) -> bool:
        if not self.raced:
            self.raced = True
            assert super().cancel(job_id, owner, team_id)  # the other request
        return super().cancel(job_id, owner, team_id)


def test_a_delete_that_lost_the_race_is_404_and_writes_no_second_audit_entry() -> None:
    exports = _RacingExports()
    done = exports.start(owner="nurse", team_id="t", types=("Patient",), request_url="x", run=lambda j: None)
    for _ in range(1000):
        if done.finished_at is not None:
            break
        threading.Event().wait(0.01)
    app = SimpleNamespace(state=SimpleNamespace(fhir_exports=exports))
    request = Request({"type": "http", "method": "DELETE", "path": "/fhir/$export-status", "headers": [],
                       "query_string": b"", "app": app})  # fmt: skip
    audits: list[Any] = []
    ctx = SimpleNamespace(audit=lambda *a, **k: audits.append(a))
    who = SimpleNamespace(kind="api", username="nurse", team_id="t", csrf_token="")
    with pytest.raises(HTTPException) as err:
        fhir_export.export_cancel(request, ctx, who, job=done.job_id)  # type: ignore[arg-type]
    assert err.value.status_code == 404
    assert audits == []  # the winner's request audits its own cancellation


def test_a_reading_among_many_at_the_same_instant_is_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kit flushing a backlog with the upload time on every reading (or several devices): the read
    fetches only 8*2+1 readings of that instant, ordered by metric, and the asked-for one may be cut."""
    at = datetime(2026, 1, 1, tzinfo=UTC)

    def reading(i: int, metric: str) -> Any:
        return SimpleNamespace(measurement_id=f"{i:032x}", metric=metric, measured_at=at)

    stored = [reading(i, "heart_rate") for i in range(20)] + [reading(99, "weight")]
    monkeypatch.setattr(archive_read, "located", lambda conn, mid, patients=None: ("P1", at))
    monkeypatch.setattr(source.registry_read, "team_patients", lambda conn, team: [("P1", at, None)])
    monkeypatch.setattr(source, "find_patient", lambda conn, pid, team: object())
    monkeypatch.setattr(
        archive_read, "series",
        lambda conn, pid, start, end, *, metric=None, metrics=None, limit: sorted(
            stored, key=lambda r: r.metric
        )[:limit],
    )  # fmt: skip
    conn = SimpleNamespace(rollback=lambda: None)
    found = source.observation_readings(conn, f"{99:032x}", "t")  # type: ignore[arg-type]
    assert found is not None
    assert f"{99:032x}" in {r.measurement_id for r in found[1]}
