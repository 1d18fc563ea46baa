"""The FHIR R4 read API of the response centre, under /fhir (docs/fhir-api.md).

    GET /fhir/metadata                  the CapabilityStatement (no login)
    GET /fhir/Patient/{patient_id}      a patient by pseudonym; identity for the roles that see it
    GET /fhir/Patient                   search: _id, identifier, _count, _offset
    GET /fhir/Observation               search: patient (required), code, date, _count, _offset
    GET /fhir/Flag/{episode_id}         an alert episode as a Flag
    GET /fhir/Flag                      search: patient, status, _count, _offset
    GET /fhir/Device/{device_id}        a kit's measuring device, by serial
    GET /fhir/Device                    search: patient (required)
    GET /fhir/QuestionnaireResponse     search: patient (required), newest first
    GET /fhir/Questionnaire             Vaktrom's questionnaires (no login: no patient data)

Same bearer tokens as /api/v1, same team scoping: another team's patient or alert answers 404, as
one that does not exist. Every error is an OperationOutcome (`fhir_error`, used by the service's
exception handlers for every path under /fhir).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from alerts.accounts import Principal, Role
from alerts.console.context import Clinician, Console, Ctx, client_ip, scope
from alerts.fhir import records, resources, search, source
from contracts import QUESTIONNAIRES
from registry import Actor, RegistryError

__all__ = ["IDENTITY_ROLES", "fhir_api", "fhir_error", "install_fhir_errors"]

# The roles that see who a patient is: those the console's patient page shows the identity to.
IDENTITY_ROLES = frozenset({Role.NURSE, Role.COORDINATOR, Role.PHYSICIAN})
_ISSUE_CODES = {
    400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 409: "conflict", 422: "invalid",
    429: "throttled",
}  # fmt: skip

fhir_api = APIRouter(prefix="/fhir", tags=["fhir"])


class FhirResponse(JSONResponse):
    media_type = resources.FHIR_JSON


def fhir_error(status: int, message: str, headers: dict[str, str] | None = None) -> FhirResponse:
    """An OperationOutcome answer; 401 says how to authenticate."""
    code = _ISSUE_CODES.get(status, "exception" if status >= 500 else "processing")
    headers = dict(headers or {})
    if status == 401:
        headers.setdefault("WWW-Authenticate", 'Bearer realm="vaktrom"')
    return FhirResponse(resources.operation_outcome(message, code=code), status_code=status, headers=headers)


def install_fhir_errors(app: FastAPI) -> None:
    """OperationOutcomes also for the framework's own refusals under /fhir (an unknown resource type
    404, a method other than GET 405) and for an unexpected error (500); elsewhere its answers stay
    as they were."""

    async def framework_error(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, StarletteHTTPException):  # registered for that class only
            raise exc
        if request.url.path.startswith("/fhir/"):
            return fhir_error(exc.status_code, str(exc.detail), dict(exc.headers or {}))
        return await http_exception_handler(request, exc)

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Starlette's last resort (the error is re-raised after this answer, so it is still logged
        # with its traceback): a FHIR client gets an OperationOutcome here too, not a text/plain 500.
        if request.url.path.startswith("/fhir/"):
            return fhir_error(
                500, "the server could not answer this request (its log says why); try again, and tell "
                "the operators if it goes on"
            )  # fmt: skip
        return PlainTextResponse("Internal Server Error", status_code=500)

    app.add_exception_handler(StarletteHTTPException, framework_error)
    app.add_exception_handler(Exception, unexpected)


def _parsed(parse: Any, request: Request) -> Any:
    try:
        return parse(request.query_params.multi_items())
    except search.SearchError as exc:
        raise HTTPException(400, str(exc)) from None


def _base(request: Request) -> str:
    return f"{request.url.scheme}://{request.url.netloc}/fhir"


def _bundle(request: Request, found: list[dict[str, Any]], page: search.Page) -> FhirResponse:
    """A searchset of one page: `found` holds up to one more than the page, which means a next page."""
    next_url = None
    if len(found) > page.count and page.offset + page.count <= search.MAX_OFFSET:
        params = [(k, v) for k, v in request.query_params.multi_items() if k != "_offset"]
        params.append(("_offset", str(page.offset + page.count)))
        next_url = f"{_base(request)}{request.url.path.removeprefix('/fhir')}?{urlencode(params)}"
    return FhirResponse(
        resources.searchset(found[: page.count], self_url=str(request.url), next_url=next_url)
    )


_MOST_OBSERVATIONS = search.MAX_OFFSET * 3  # the longest read one search makes
_MEASUREMENT_ID = re.compile(r"[0-9a-f]{32}")  # the archive's ids; anything else is no Observation here


def _hidden(kind: str) -> HTTPException:
    return HTTPException(404, f"no such {kind} (or not one your team follows)")


@fhir_api.get("/metadata", openapi_extra=scope("public"))
def metadata(request: Request) -> FhirResponse:
    """What this server offers (read and search of Patient, Observation, Flag)."""
    return FhirResponse(resources.capability_statement(base_url=_base(request), now=datetime.now(UTC)))


@fhir_api.get("/Patient/{patient_id}", openapi_extra=scope("team"))
def read_patient(request: Request, ctx: Ctx, patient_id: str, who: Clinician) -> FhirResponse:
    """A patient by pseudonym; name, birth date and national id for the roles that see identities."""
    with ctx.db() as conn:
        row = source.find_patient(conn, patient_id, who.team_id)
        if row is None:
            raise _hidden("patient")
        identity = _identity(ctx, request, who, conn, patient_id)
    ctx.audit(request, who.username, "fhir_read_patient", target=patient_id, patient_id=patient_id)
    if identity is None:
        return FhirResponse(resources.patient(patient_id, active=row.discharged_at is None))
    return FhirResponse(
        resources.patient(
            patient_id, active=row.discharged_at is None, name=identity.name,
            birth_date=identity.birth_date, national_id=identity.national_id,
        )
    )  # fmt: skip


def _identity(ctx: Console, request: Request, who: Principal, conn: Any, patient_id: str) -> Any:
    """The registry's identity of the patient (its reading audited there), or None: the role does
    not see identities, no registry or key is configured, or none was recorded."""
    if who.role not in IDENTITY_ROLES or ctx.registry is None:
        return None
    actor = Actor(who.username, client_ip(request), who.team_id)
    try:
        return ctx.registry.identity(conn, actor, patient_id)
    except RegistryError:
        return None  # no key configured (503) or a seal that does not open: the pseudonym only


@fhir_api.get("/Patient", openapi_extra=scope("team"))
def search_patients(request: Request, ctx: Ctx, who: Clinician) -> FhirResponse:
    """The caller's team's patients, by pseudonym (a search carries no identities)."""
    query: search.PatientQuery = _parsed(search.parse_patient, request)
    page = query.page
    with ctx.db() as conn:
        if query.patient_id is not None:
            one = source.find_patient(conn, query.patient_id, who.team_id)
            rows = [one] if one is not None and page.offset == 0 else []
        else:
            rows = source.patients(conn, who.team_id, limit=page.count + 1, offset=page.offset)
    ctx.audit(request, who.username, "fhir_search_patient", detail={"rows": len(rows)})
    found = [resources.patient(r.patient_id, active=r.discharged_at is None) for r in rows]
    return _bundle(request, found, page)


@fhir_api.get("/Observation", openapi_extra=scope("team"))
def search_observations(request: Request, ctx: Ctx, who: Clinician) -> FhirResponse:
    """One patient's measurements, oldest first, as vital-sign (and glucose) Observations."""
    query: search.ObservationQuery = _parsed(search.parse_observation, request)
    page = query.page
    wanted = page.offset + page.count + 1
    with ctx.db() as conn:
        if source.find_patient(conn, query.patient_id, who.team_id) is None:
            raise _hidden("patient")
        built = _observations(conn, query, wanted)
    ctx.audit(
        request, who.username, "fhir_search_observation", target=query.patient_id,
        patient_id=query.patient_id, detail={"rows": max(0, min(len(built) - page.offset, page.count))},
    )  # fmt: skip
    return _bundle(request, built[page.offset : wanted], page)


def _observations(conn: Any, query: search.ObservationQuery, wanted: int) -> list[dict[str, Any]]:
    """At least `wanted` Observations matching the query, oldest first, when that many exist (fewer:
    all there are). Only the metrics the codes come from are read, a page's worth at first and more
    while Observations of other codes (glucose in the other unit) use up the read. A read that
    stopped at its limit may have cut its last instant (a cuff's second pressure): that instant is
    left for the next, longer read or the next page."""
    observations = wanted if query.codes is None else 2 * wanted
    metrics = None if query.metrics is None else [m.value for m in query.metrics]
    while True:
        rows, cut = source.readings(
            conn, query.patient_id, query.start, query.end, metrics=metrics, observations=observations
        )
        if cut:
            last = rows[-1].measured_at
            rows = [r for r in rows if r.measured_at != last]
        built = resources.observations(rows, patient_id=query.patient_id)
        if query.codes is not None:
            built = [o for o in built if search.matches(o, query.codes)]
        if len(built) >= wanted or not cut or observations >= _MOST_OBSERVATIONS:
            return built
        observations = min(4 * observations, _MOST_OBSERVATIONS)


@fhir_api.get("/Observation/{observation_id}", openapi_extra=scope("team"))
def read_observation(request: Request, ctx: Ctx, observation_id: str, who: Clinician) -> FhirResponse:
    """One Observation by the id a search gave it (a blood-pressure panel: its systolic reading's)."""
    if _MEASUREMENT_ID.fullmatch(observation_id) is None:
        raise _hidden("observation")
    with ctx.db() as conn:
        found = source.observation_readings(conn, observation_id, who.team_id)
    built = [] if found is None else resources.observations(found[1], patient_id=found[0])
    match = [o for o in built if o["id"] == observation_id]
    if found is None or not match:
        raise _hidden("observation")
    ctx.audit(request, who.username, "fhir_read_observation", target=observation_id, patient_id=found[0])
    return FhirResponse(match[0])


@fhir_api.get("/Flag/{episode_id}", openapi_extra=scope("team"))
def read_flag(request: Request, ctx: Ctx, episode_id: str, who: Clinician) -> FhirResponse:
    """An alert episode of the caller's team as a Flag."""
    with ctx.db() as conn:
        found = source.alerts(conn, who.team_id, episode_id=episode_id, limit=1)
    if not found:
        raise _hidden("alert")
    ctx.audit(request, who.username, "fhir_read_flag", target=episode_id, patient_id=found[0]["patient_id"])
    return FhirResponse(resources.flag(found[0]))


@fhir_api.get("/Flag", openapi_extra=scope("team"))
def search_flags(request: Request, ctx: Ctx, who: Clinician) -> FhirResponse:
    """Alert episodes of the caller's team, newest first; by patient and status (active: still open)."""
    query: search.FlagQuery = _parsed(search.parse_flag, request)
    page = query.page
    with ctx.db() as conn:
        if query.patient_id is not None and source.find_patient(conn, query.patient_id, who.team_id) is None:
            raise _hidden("patient")
        rows = source.alerts(
            conn, who.team_id, patient_id=query.patient_id, active=query.active,
            limit=page.count + 1, offset=page.offset,
        )  # fmt: skip
    ctx.audit(request, who.username, "fhir_search_flag", target=query.patient_id, detail={"rows": len(rows)})
    return _bundle(request, [resources.flag(r) for r in rows], page)


@fhir_api.get("/Device/{device_id}", openapi_extra=scope("team"))
def read_device(request: Request, ctx: Ctx, device_id: str, who: Clinician) -> FhirResponse:
    """A measuring device of a kit of the caller's team, by serial."""
    with ctx.db() as conn:
        found = source.device(conn, device_id, who.team_id)
    if found is None:
        raise _hidden("device")
    ctx.audit(request, who.username, "fhir_read_device", target=device_id, patient_id=found.patient_id)
    return FhirResponse(records.device(found.device_id, kit_id=found.kit_id, kind=found.kind,
                                       patient_id=found.patient_id))  # fmt: skip


@fhir_api.get("/Device", openapi_extra=scope("team"))
def search_devices(request: Request, ctx: Ctx, who: Clinician) -> FhirResponse:
    """The devices of every kit the patient has had (the patient named while the kit is theirs)."""
    query: search.PatientScoped = _parsed(search.parse_patient_scoped, request)
    page = query.page
    with ctx.db() as conn:
        if source.find_patient(conn, query.patient_id, who.team_id) is None:
            raise _hidden("patient")
        rows = source.devices(conn, query.patient_id)[page.offset : page.offset + page.count + 1]
    ctx.audit(request, who.username, "fhir_search_device", target=query.patient_id,
              patient_id=query.patient_id, detail={"rows": len(rows)})  # fmt: skip
    found = [records.device(r.device_id, kit_id=r.kit_id, kind=r.kind, patient_id=r.patient_id) for r in rows]
    return _bundle(request, found, page)


@fhir_api.get("/QuestionnaireResponse", openapi_extra=scope("team"))
def search_answers(request: Request, ctx: Ctx, who: Clinician) -> FhirResponse:
    """The patient's questionnaire answers, newest first."""
    query: search.PatientScoped = _parsed(search.parse_patient_scoped, request)
    page = query.page
    with ctx.db() as conn:
        if source.find_patient(conn, query.patient_id, who.team_id) is None:
            raise _hidden("patient")
        rows = source.answers(conn, query.patient_id, limit=page.offset + page.count + 1)[page.offset :]
    ctx.audit(request, who.username, "fhir_search_answers", target=query.patient_id,
              patient_id=query.patient_id, detail={"rows": len(rows)})  # fmt: skip
    found = [records.questionnaire_response(a, patient_id=query.patient_id) for a in rows]
    return _bundle(request, found, page)


@fhir_api.get("/Questionnaire", openapi_extra=scope("public"))
def search_questionnaires(request: Request) -> FhirResponse:
    """Vaktrom's questionnaires, the definitions the QuestionnaireResponses name (no patient data)."""
    _parsed(search.parse_nothing, request)
    found = [records.questionnaire(q) for q in sorted(QUESTIONNAIRES)]
    return _bundle(request, found, search.Page(len(found) or 1, 0))
