"""Bulk export of a team's data (FHIR Bulk Data, asynchronous), under /fhir (docs/fhir-api.md).

    GET /fhir/Group/{team_id}/$export    kick-off; needs `Prefer: respond-async`; 202 and
                                          Content-Location: the status URL
    GET /fhir/$export-status?job=ID      202 (X-Progress) while it runs; 200 and the manifest when done
    GET /fhir/$export-file?job=ID&type=T one NDJSON file of the manifest

Only a member of the team (or a centre-wide clinical account) may export it; another team's Group
answers 404. A job, its status and its files are visible to the user who started it only; the
files go after an hour (`alerts.fhir.export.KEEP`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from alerts.accounts import Principal
from alerts.console.context import Clinician, Console, Ctx, csrf_checked, scope
from alerts.console.fhir_api import FhirResponse
from alerts.fhir import resources
from alerts.fhir.export import TYPES, Exports, Job, write_team
from registry import read as registry_read

__all__ = ["fhir_export"]

NDJSON = "application/fhir+ndjson"
_FORMATS = {NDJSON, "application/ndjson", "ndjson"}

fhir_export = APIRouter(prefix="/fhir", tags=["fhir"])


def _exports(request: Request) -> Exports:
    return request.app.state.fhir_exports  # type: ignore[no-any-return]


def _types(raw: str | None) -> tuple[str, ...]:
    if raw is None:
        return TYPES
    wanted = tuple(dict.fromkeys(t.strip() for t in raw.split(",") if t.strip()))
    unknown = [t for t in wanted if t not in TYPES]
    if unknown or not wanted:
        raise HTTPException(
            400, f"_type: this server exports {', '.join(TYPES)}; not {', '.join(unknown)[:120]}"
        )
    return wanted


def _check_params(request: Request) -> None:
    for name, value in request.query_params.multi_items():
        if name == "_outputFormat" and value not in _FORMATS:
            raise HTTPException(400, f"_outputFormat: this server writes {NDJSON} only")
        if name not in {"_type", "_outputFormat"}:
            raise HTTPException(
                400, f"{name[:40]!r} is not supported here: give _type and _outputFormat only"
            )


@fhir_export.get("/Group/{team_id}/$export", openapi_extra=scope("team"))
def kick_off(
    request: Request, ctx: Ctx, team_id: str, who: Clinician, prefer: Annotated[str | None, Header()] = None
) -> Response:
    """Start exporting the team's patients, observations, flags, devices and answers as NDJSON."""
    if who.team_id is not None and who.team_id != team_id:
        raise HTTPException(404, "no such group (or not your team)")
    with ctx.db() as conn:
        known = {str(t[0]) for t in registry_read.teams(conn)}
        conn.rollback()
    if team_id not in known:
        raise HTTPException(404, "no such group (or not your team)")
    if prefer is None or "respond-async" not in prefer.lower():
        raise HTTPException(
            400, "a bulk export runs in the background: send the header Prefer: respond-async"
        )
    _check_params(request)
    types = _types(request.query_params.get("_type"))
    try:
        job = _exports(request).start(
            owner=who.username, team_id=team_id, types=types, request_url=str(request.url),
            run=lambda j: _write(ctx, j),
        )  # fmt: skip
    except ValueError as exc:
        raise HTTPException(429, str(exc)) from None
    ctx.audit(request, who.username, "fhir_export", target=team_id, detail={"types": list(types)})
    status = f"{request.url.scheme}://{request.url.netloc}/fhir/$export-status?job={job.job_id}"
    outcome = resources.operation_outcome("export started", code="informational", severity="information")
    return FhirResponse(outcome, status_code=202, headers={"Content-Location": status})


def _write(ctx: Console, job: Job) -> None:
    with ctx.db() as conn:
        write_team(conn, job)


def _job(request: Request, who: Principal, job: str | None) -> Job:
    if not job:
        raise HTTPException(400, "give the export's job id: ?job=ID (from the kick-off's Content-Location)")
    found = _exports(request).find(job, who.username, who.team_id)  # one moved to another team: gone
    if found is None:
        raise HTTPException(404, "no such export (or not one you started, or older than an hour)")
    return found


@fhir_export.get("/$export-status", openapi_extra=scope("self"))
def export_status(request: Request, who: Clinician, job: str | None = None) -> Response:
    """202 with X-Progress while the export runs; 200 with the manifest once its files are ready."""
    found = _job(request, who, job)
    if found.finished_at is None:
        progress = f"{found.patients_done} of {found.patients_total} patients"
        return Response(status_code=202, headers={"X-Progress": progress, "Retry-After": "2"})
    if found.error is not None:
        return FhirResponse(resources.operation_outcome(found.error, code="exception"), status_code=500)
    base = f"{request.url.scheme}://{request.url.netloc}/fhir/$export-file?job={found.job_id}"
    return JSONResponse(
        {
            "transactionTime": found.started_at.isoformat().replace("+00:00", "Z"),
            "request": found.request_url,
            "requiresAccessToken": True,
            "output": [
                {"type": kind, "url": f"{base}&type={kind}", "count": found.counts[kind]}
                for kind in found.types
                if found.counts.get(kind)
            ],
            "error": [],
        }
    )


@fhir_export.delete("/$export-status", openapi_extra=scope("self"))
def export_cancel(request: Request, ctx: Ctx, who: Clinician, job: str | None = None) -> Response:
    """Cancel a running export, or delete a finished one's files: 202, and the job is unknown after."""
    csrf_checked(request, who, None)
    found = _job(request, who, job)
    if not _exports(request).cancel(found.job_id, who.username, who.team_id):  # another DELETE was first
        raise HTTPException(404, "no such export (or not one you started, or older than an hour)")
    ctx.audit(request, who.username, "fhir_export_cancel", target=found.team_id, detail={"job": found.job_id})
    outcome = resources.operation_outcome("export cancelled", code="informational", severity="information")
    return FhirResponse(outcome, status_code=202)


@fhir_export.get("/$export-file", openapi_extra=scope("self"))
def export_file(
    request: Request, ctx: Ctx, who: Clinician, job: str | None = None, type: str | None = None
) -> Response:
    """One NDJSON file of a finished export."""
    found = _job(request, who, job)
    if type not in found.types:
        raise HTTPException(400, f"type must be one of this export's: {', '.join(found.types)}")
    if found.finished_at is None or found.error is not None:
        raise HTTPException(409, "the export has not finished: poll its status first")
    path = found.path(type)
    if not path.is_file():  # removed meanwhile (expired, a temp cleaner)
        raise HTTPException(
            404, "the export's file is gone (exports are kept an hour); start the export again"
        )
    ctx.audit(request, who.username, "fhir_export_file", target=found.team_id, detail={"type": type})
    return FileResponse(path, media_type=NDJSON)
