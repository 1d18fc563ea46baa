"""Accounts and API tokens over the JSON API: administrators manage every account of the centre,
everyone may see and revoke their own tokens (docs/console-security.md, "Account lifecycle").

    GET    /api/v1/users                                   every account (admin)
    POST   /api/v1/users/{username}/deactivate | activate  sessions and tokens end at once (admin)
    POST   /api/v1/users/{username}/role                   new role and team; sessions end (admin)
    GET    /api/v1/users/{username}/tokens                 the account's API tokens (admin)
    POST   /api/v1/users/{username}/tokens                 a new token, shown once (admin; not for a
                                                           clinical account)
    DELETE /api/v1/users/{username}/tokens/{token_id}      revoke one (admin)
    GET | POST /api/v1/me/tokens, DELETE /api/v1/me/tokens/{token_id}    the caller's own

Accounts are centre-wide objects: an administrator manages them all and still sees no patients. So
an administrator cannot be handed a clinical account's token: with it they would read patients and
act under a nurse's name. A clinical account makes its own (`POST /api/v1/me/tokens`), or an
operator makes one on the command line. Every change is in the audit log.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from alerts import accounts, directory
from alerts.accounts import MAX_TOKEN_DAYS, AccountError, Principal, Role
from alerts.console.context import Ctx, api_user, csrf_checked, role_in

__all__ = ["accounts_api"]

CENTRE = {"x-vaktrom-scope": "centre"}  # centre-wide, administrators only
SELF = {"x-vaktrom-scope": "self"}  # the caller's own things

Admin = Annotated[Principal, Depends(role_in(Role.ADMIN))]
Caller = Annotated[Principal, Depends(api_user)]


class Account(BaseModel):
    username: str
    display_name: str
    role: Role
    team_id: str | None = Field(description="null: every team of the centre")
    active: bool
    created_at: datetime


class RoleChange(BaseModel):
    role: Role
    team_id: str | None = Field(max_length=64, description="null: every team of the centre")


class Ended(BaseModel):
    username: str
    sessions_ended: int = Field(description="browser sessions and API tokens that stopped working")


class TokenInfo(BaseModel):
    token_id: int
    username: str
    created_at: datetime
    expires_at: datetime
    last_seen_at: datetime


class TokenRequest(BaseModel):
    days: int | None = Field(
        None, ge=1, le=MAX_TOKEN_DAYS, description="lifetime; default VAKTROM_ALERTS_TOKEN_DAYS"
    )


class NewToken(TokenInfo):
    token: str = Field(description="the bearer token; shown this once, only its hash is kept")


accounts_api = APIRouter(prefix="/api/v1", tags=["accounts"])
_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such account or token"}}


def _refuse_self(who: Principal, username: str, what: str) -> None:
    if who.username == username:
        raise HTTPException(409, f"you cannot {what} your own account: ask another administrator")


def _known(ctx: Ctx, username: str) -> None:
    with ctx.db() as conn:
        found = directory.has_account(conn, username)
        conn.rollback()
    if not found:
        raise HTTPException(404, f"there is no user {username!r}")


@accounts_api.get("/users", response_model=list[Account], openapi_extra=CENTRE)
def list_users(ctx: Ctx, who: Admin) -> list[dict[str, Any]]:
    with ctx.db() as conn:
        return accounts.users(conn)


@accounts_api.post(
    "/users/{username}/deactivate", response_model=Ended, responses=_NOT_FOUND, openapi_extra=CENTRE
)
def deactivate(request: Request, ctx: Ctx, username: str, who: Admin) -> Ended:
    """Disable the account: its browser sessions and API tokens are refused from now on."""
    csrf_checked(request, who, None)
    _refuse_self(who, username, "deactivate")
    try:
        with ctx.db() as conn:
            ended = accounts.deactivate(conn, username, by=who.username)
    except AccountError as exc:
        raise HTTPException(404, str(exc)) from None
    ctx.audit(request, who.username, "deactivate_user", target=username, detail={"sessions_ended": ended})
    return Ended(username=username, sessions_ended=ended)


@accounts_api.post(
    "/users/{username}/activate", response_model=Ended, responses=_NOT_FOUND, openapi_extra=CENTRE
)
def activate(request: Request, ctx: Ctx, username: str, who: Admin) -> Ended:
    csrf_checked(request, who, None)
    try:
        with ctx.db() as conn:
            accounts.activate(conn, username)
    except AccountError as exc:
        raise HTTPException(404, str(exc)) from None
    ctx.audit(request, who.username, "activate_user", target=username)
    return Ended(username=username, sessions_ended=0)


@accounts_api.post("/users/{username}/role", response_model=Ended, responses=_NOT_FOUND, openapi_extra=CENTRE)
def change_role(request: Request, ctx: Ctx, username: str, body: RoleChange, who: Admin) -> Ended:
    """Another role or team; the account's sessions and tokens end (they carried the old rights)."""
    csrf_checked(request, who, None)
    _refuse_self(who, username, "change the role of")
    _known(ctx, username)
    try:
        with ctx.db() as conn:
            ended = accounts.change_role(
                conn, username, role=body.role, team_id=body.team_id, by=who.username
            )
    except AccountError as exc:
        raise HTTPException(422, str(exc)) from None
    ctx.audit(
        request, who.username, "change_role", target=username,
        detail={"role": body.role.value, "team": body.team_id, "sessions_ended": ended},
    )  # fmt: skip
    return Ended(username=username, sessions_ended=ended)


@accounts_api.get(
    "/users/{username}/tokens", response_model=list[TokenInfo], responses=_NOT_FOUND, openapi_extra=CENTRE
)
def user_tokens(ctx: Ctx, username: str, who: Admin) -> list[accounts.Token]:
    _known(ctx, username)
    with ctx.db() as conn:
        return accounts.tokens(conn, username)


@accounts_api.post(
    "/users/{username}/tokens", response_model=NewToken, responses=_NOT_FOUND, openapi_extra=CENTRE
)
def add_token(
    request: Request, ctx: Ctx, username: str, who: Admin, body: TokenRequest | None = None
) -> NewToken:
    """A bearer token for an administrator's account (another console, a script); it is shown in this
    answer only. A clinical account's token is refused (403): it would let the administrator see
    patients as that user; the account makes its own at /api/v1/me/tokens."""
    csrf_checked(request, who, None)
    with ctx.db() as conn:
        found = directory.account_state(conn, username)
        conn.rollback()
    if found is None or not found[0]:
        raise HTTPException(404, f"there is no active user {username!r}")
    if Role(found[1]).clinical:
        raise HTTPException(
            403,
            f"{username!r} is a {found[1]} account, which sees patients: an administrator may not hold its "
            "token. The account makes its own (POST /api/v1/me/tokens), or an operator runs "
            f"`python -m alerts.admin token {username}`",
        )
    return _new_token(request, ctx, who, username, body)


@accounts_api.post("/me/tokens", response_model=NewToken, openapi_extra=SELF)
def add_my_token(request: Request, ctx: Ctx, who: Caller, body: TokenRequest | None = None) -> NewToken:
    """A bearer token for your own account (an integration rotating its token, say); shown this once."""
    csrf_checked(request, who, None)
    return _new_token(request, ctx, who, who.username, body)


def _new_token(
    request: Request, ctx: Ctx, who: Principal, username: str, body: TokenRequest | None
) -> NewToken:
    days = body.days if body is not None and body.days is not None else ctx.settings.token_days
    with ctx.db() as conn:
        try:
            secret = accounts.new_session(conn, username, kind="api", lifetime=timedelta(days=days), ip=None)
        except AccountError as exc:
            raise HTTPException(409, str(exc)) from None
        token = accounts.token_of(conn, secret)
    ctx.audit(
        request, who.username, "add_token", target=username, detail={"days": days, "token_id": token.token_id}
    )
    return NewToken(token=secret, **_info(token))


@accounts_api.delete(
    "/users/{username}/tokens/{token_id}", status_code=204, responses=_NOT_FOUND, openapi_extra=CENTRE
)
def revoke_token(request: Request, ctx: Ctx, username: str, token_id: int, who: Admin) -> None:
    csrf_checked(request, who, None)
    _revoke(request, ctx, who, username, token_id)


@accounts_api.get("/me/tokens", response_model=list[TokenInfo], openapi_extra=SELF)
def my_tokens(ctx: Ctx, who: Caller) -> list[accounts.Token]:
    with ctx.db() as conn:
        return accounts.tokens(conn, who.username)


@accounts_api.delete("/me/tokens/{token_id}", status_code=204, responses=_NOT_FOUND, openapi_extra=SELF)
def revoke_my_token(request: Request, ctx: Ctx, token_id: int, who: Caller) -> None:
    """Revoke one of your own tokens (the one you call with, too)."""
    csrf_checked(request, who, None)
    _revoke(request, ctx, who, who.username, token_id)


def _revoke(request: Request, ctx: Ctx, who: Principal, username: str, token_id: int) -> None:
    with ctx.db() as conn:
        revoked = accounts.revoke_token(conn, username, token_id)
    if not revoked:
        raise HTTPException(404, f"{username!r} has no API token {token_id}")
    ctx.audit(request, who.username, "revoke_token", target=username, detail={"token_id": token_id})


def _info(token: accounts.Token) -> dict[str, Any]:
    return {
        "token_id": token.token_id, "username": token.username, "created_at": token.created_at,
        "expires_at": token.expires_at, "last_seen_at": token.last_seen_at,
    }  # fmt: skip
