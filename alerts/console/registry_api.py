"""The registry's operations in the HTTP API: enrolment, kits and care plans.

    POST /api/v1/patients                               enrol (coordinator)
    GET  /api/v1/patients/{id}/careplan                 current version and history (clinical roles)
    PUT  /api/v1/patients/{id}/careplan                 a new version (coordinator, physician)
    GET  /api/v1/patients/{id}/careplan/proposal        proposed thresholds (coordinator, physician)
    POST /api/v1/kits                                   add a kit (coordinator, admin)
    POST /api/v1/kits/{kit}/assignment                  hand it to a patient (coordinator)
    POST /api/v1/kits/{kit}/return | retire | pairing   (coordinator, admin)
    POST /api/v1/pairing/claim                          a kit exchanges its one-time code for credentials

Every call is role-checked and audited (by `registry.store`); refusals change nothing and answer
with the registry's reason. An administrator manages kits but sees no patient data.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import Annotated, Any, TypeVar

import msgspec
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from alerts.accounts import Principal, Role
from alerts.console.context import Ctx, client_ip, csrf_checked, role_in, scope
from contracts import KIT_LANGUAGES, Condition, ExpectedMeasurement
from registry import (
    Actor,
    BrokerAdminError,
    Credentials,
    Identity,
    KitDevice,
    PlanChange,
    Registry,
    RegistryError,
)

__all__ = ["registry_api"]

registry_api = APIRouter(prefix="/api/v1", tags=["registry"])
T = TypeVar("T")


Coordinator = Annotated[Principal, Depends(role_in(Role.COORDINATOR))]
KitManager = Annotated[Principal, Depends(role_in(Role.COORDINATOR, Role.ADMIN))]
PlanEditor = Annotated[Principal, Depends(role_in(Role.COORDINATOR, Role.PHYSICIAN))]
PlanReader = Annotated[Principal, Depends(role_in(Role.NURSE, Role.COORDINATOR, Role.PHYSICIAN))]


def _run(
    request: Request, ctx: Ctx, who: Principal | None, operation: Callable[[Registry, Any, Actor], T],
    *, write: bool = True,
) -> T:  # fmt: skip
    """Run a registry operation as `who` (None: a kit, which has no account), mapping refusals to HTTP."""
    registry, actor = ctx.registry_as(request, who)
    if who is not None and write:
        csrf_checked(request, who, None)
    try:
        with ctx.db() as conn:
            return operation(registry, conn, actor)
    except RegistryError as exc:
        raise HTTPException(exc.status, str(exc)) from None
    except BrokerAdminError as exc:
        raise HTTPException(503, f"{exc}; nothing was changed") from None


# the patient's language, at enrolment and in a plan change: one of those the kit texts are in
KitLanguageField = Annotated[
    str | None,
    Field(
        pattern=f"^({'|'.join(KIT_LANGUAGES)})$",
        description="the patient's language: what the kit's texts are in",
    ),
]


class EnrolBody(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    birth_date: date | None = None
    national_id: str | None = Field(default=None, description="11 digits; sealed at rest, never returned")
    team_id: str
    condition: Condition
    municipality: str | None = None
    language: KitLanguageField = None


class Enrolled(BaseModel):
    patient_id: str = Field(description="the pseudonym the pipeline will use")
    care_plan_version: int


@registry_api.post("/patients", response_model=Enrolled, status_code=201, openapi_extra=scope("team"))
def enrol(request: Request, ctx: Ctx, body: EnrolBody, who: Coordinator) -> Enrolled:
    identity = Identity(name=body.name, birth_date=body.birth_date, national_id=body.national_id)
    team, condition, municipality, language = body.team_id, body.condition, body.municipality, body.language
    plan = _run(request, ctx, who, lambda r, c, a: r.enrol(
        c, a, identity=identity, team_id=team, condition=condition, municipality=municipality,
        language=language,
    ))  # fmt: skip
    return Enrolled(patient_id=plan.patient_id, care_plan_version=plan.version)


class PlanVersion(BaseModel):
    version: int
    published: bool
    plan: dict[str, Any] = Field(description="the care-plan contract as published (vaktrom.careplan.v1)")


@registry_api.get(
    "/patients/{patient_id}/careplan", response_model=list[PlanVersion], openapi_extra=scope("team")
)
def careplan(request: Request, ctx: Ctx, patient_id: str, who: PlanReader) -> list[PlanVersion]:
    """Every version, newest first."""
    plans = _run(request, ctx, who, lambda r, c, a: r.careplan(c, a, patient_id), write=False)
    return [
        PlanVersion(version=p.version, published=at is not None, plan=msgspec.to_builtins(p))
        for p, at in plans
    ]


class ChangeBody(BaseModel):
    reason: str = Field(min_length=1, max_length=500, description="why: kept with the version")
    thresholds: dict[str, dict[str, float | None]] = Field(
        default_factory=dict, description="rule -> parameter -> value; null returns it to the default"
    )
    rules_off: list[str] = Field(default_factory=list, description="rule ids to switch off")
    rules_on: list[str] = Field(
        default_factory=list,
        description="opt-in rule ids to switch on (e.g. HF-2, T-3); they run with their default "
        "parameters unless `thresholds` sets them",
    )
    spo2_target: str | None = Field(default=None, pattern=r"^(88-92|94-98)$")
    language: KitLanguageField = None
    condition: Condition | None = None
    expected: list[dict[str, Any]] | None = None


@registry_api.put("/patients/{patient_id}/careplan", response_model=PlanVersion, openapi_extra=scope("team"))
def set_careplan(
    request: Request, ctx: Ctx, patient_id: str, body: ChangeBody, who: PlanEditor
) -> PlanVersion:
    try:
        expected = (
            None if body.expected is None else msgspec.convert(body.expected, list[ExpectedMeasurement])
        )
    except msgspec.ValidationError as exc:
        raise HTTPException(422, f"expected measurements: {exc}") from None
    change = PlanChange(
        reason=body.reason, thresholds=body.thresholds, rules_off=body.rules_off, rules_on=body.rules_on,
        spo2_target=body.spo2_target, condition=body.condition, expected=expected, language=body.language,
    )  # fmt: skip
    plan = _run(request, ctx, who, lambda r, c, a: r.careplan_set(c, a, patient_id, change))
    return PlanVersion(version=plan.version, published=True, plan=msgspec.to_builtins(plan))


class ProposalOut(BaseModel):
    thresholds: dict[str, dict[str, float]]
    basis: dict[str, str]
    skipped: dict[str, str]


@registry_api.get(
    "/patients/{patient_id}/careplan/proposal", response_model=ProposalOut, openapi_extra=scope("team")
)
def proposal(request: Request, ctx: Ctx, patient_id: str, who: PlanEditor) -> ProposalOut:
    """Personal thresholds from the last 14 days of readings; nothing changes until a PUT accepts them."""
    found = _run(request, ctx, who, lambda r, c, a: r.careplan_propose(c, a, patient_id), write=False)
    return ProposalOut(thresholds=found.thresholds, basis=found.basis, skipped=found.skipped)


class DeviceBody(BaseModel):
    serial: str
    kind: str
    profile: str | None = None


class KitBody(BaseModel):
    kit_id: str
    model: str | None = None
    devices: list[DeviceBody] = []


class Done(BaseModel):
    ok: bool = True
    detail: str


@registry_api.post("/kits", response_model=Done, status_code=201, openapi_extra=scope("centre"))
def add_kit(request: Request, ctx: Ctx, body: KitBody, who: KitManager) -> Done:
    devices = [KitDevice(d.serial, d.kind, d.profile) for d in body.devices]
    _run(request, ctx, who, lambda r, c, a: r.kit_add(c, a, body.kit_id, model=body.model, devices=devices))
    return Done(detail=f"kit {body.kit_id} in stock; pair it to give it credentials")


class AssignBody(BaseModel):
    patient_id: str
    at: datetime | None = Field(default=None, description="from when (default now); needs an offset")


@registry_api.post("/kits/{kit_id}/assignment", response_model=Done, openapi_extra=scope("team"))
def assign_kit(request: Request, ctx: Ctx, kit_id: str, body: AssignBody, who: Coordinator) -> Done:
    at = _run(request, ctx, who, lambda r, c, a: r.kit_assign(c, a, kit_id, body.patient_id, at=body.at))
    return Done(detail=f"kit {kit_id} assigned from {at.isoformat()}")


class AtBody(BaseModel):
    at: datetime | None = None


@registry_api.post("/kits/{kit_id}/return", response_model=Done, openapi_extra=scope("team"))
def return_kit(request: Request, ctx: Ctx, kit_id: str, body: AtBody, who: KitManager) -> Done:
    _run(request, ctx, who, lambda r, c, a: r.kit_return(c, a, kit_id, at=body.at))
    return Done(detail=f"kit {kit_id} back in stock")


@registry_api.post("/kits/{kit_id}/retire", response_model=Done, openapi_extra=scope("team"))
def retire_kit(request: Request, ctx: Ctx, kit_id: str, body: AtBody, who: KitManager) -> Done:
    _run(request, ctx, who, lambda r, c, a: r.kit_retire(c, a, kit_id, at=body.at))
    return Done(detail=f"kit {kit_id} retired and disconnected")


class Pairing(BaseModel):
    kit_id: str
    code: str = Field(description="one use; shown only now")
    expires_at: datetime


@registry_api.post(
    "/kits/{kit_id}/pairing", response_model=Pairing, status_code=201, openapi_extra=scope("team")
)
def pair_kit(request: Request, ctx: Ctx, kit_id: str, who: KitManager) -> Pairing:
    code, expires = _run(request, ctx, who, lambda r, c, a: r.pair(c, a, kit_id))
    return Pairing(kit_id=kit_id, code=code, expires_at=expires)


class ClaimBody(BaseModel):
    code: str = Field(min_length=12, max_length=20)


@registry_api.post("/pairing/claim", response_model=Credentials, openapi_extra=scope("public"))
def claim(request: Request, ctx: Ctx, body: ClaimBody) -> Credentials:
    """A kit (or the patient's phone) exchanges its one-time code for its broker credentials
    (shown once: Vaktrom keeps no copy of the password)."""
    return _run(request, ctx, None, lambda r, c, _a: r.claim(c, body.code, ip=client_ip(request)))
