"""Single sign-on with the hospital's OpenID provider: the authorisation code flow with PKCE, through
Authlib's Starlette client (docs/single-sign-on.md).

    /login/oidc             start: to the provider's login, with state, nonce and a PKCE challenge
    /login/oidc/callback    back from it: code -> tokens (ID token checked: signature, issuer,
                            audience, nonce), claims -> account (`alerts.sso`) -> a console session

The state, nonce and PKCE verifier wait in a signed cookie (`vaktrom_oidc`, Starlette's session
middleware) that lives ten minutes, is sent only to /login/oidc and is SameSite=Lax: the provider's
redirect back is a navigation from another site, which a Strict cookie would not follow. A state
that is not the one this browser was given, or a code used before, ends in an error page and no
session. A login through the provider makes the same session as the local form (`accounts`), so
every role and team check applies unchanged; the logout (`web.logout`) also ends the session at the
provider, with `oidc_logout_url`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import weakref
from typing import Any

import httpx
from authlib.integrations.starlette_client import OAuth, OAuthError, StarletteOAuth2App
from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import RedirectResponse, Response
from joserfc.errors import JoseError
from starlette.middleware.sessions import SessionMiddleware

from alerts import accounts, sso
from alerts.console.context import COOKIE, Ctx, client_ip, safe_next, scope
from alerts.settings import AlertsSettings

__all__ = ["STATE_COOKIE", "oidc_client", "oidc_logout_url", "oidc_router", "use_oidc"]

log = logging.getLogger(__name__)

STATE_COOKIE = "vaktrom_oidc"
STATE_LIFE_S = 600  # a login at the provider must finish within ten minutes
_NEXT = "vaktrom_next"
_NO_ANSWER = "the hospital's login does not answer; try again shortly or log in with your Vaktrom account"
_MISCONFIGURED = (
    "the hospital's login is not set up correctly here; log in with your Vaktrom account and tell "
    "the operators"
)
REREAD_S = 60  # a provider whose metadata named another issuer is asked again at most this often
_REFUSED: weakref.WeakKeyDictionary[StarletteOAuth2App, float] = weakref.WeakKeyDictionary()

oidc_router = APIRouter(include_in_schema=False)


def oidc_client(settings: AlertsSettings) -> StarletteOAuth2App | None:
    """The provider's client (None without single sign-on). Its metadata is fetched at first use."""
    if not settings.oidc_issuer:
        return None
    oauth = OAuth()
    client = oauth.register(
        "hospital",
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret,
        server_metadata_url=settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={"scope": "openid profile email", "code_challenge_method": "S256"},
    )
    assert isinstance(client, StarletteOAuth2App)  # registered with OAuth 2 arguments, so always
    return client


def use_oidc(app: FastAPI, settings: AlertsSettings) -> None:
    """Mount the flow's routes and its state cookie, when single sign-on is configured."""
    if not settings.oidc_issuer:
        return
    # Signed with a key of its own derived from the client secret: every instance of the service
    # shares it, and the secret itself never signs anything else.
    key = hmac.new(settings.oidc_client_secret.encode(), b"vaktrom oidc login state", hashlib.sha256)
    app.add_middleware(
        SessionMiddleware, secret_key=key.hexdigest(), session_cookie=STATE_COOKIE, max_age=STATE_LIFE_S,
        path="/login/oidc", same_site="lax", https_only=settings.cookie_secure,
    )  # fmt: skip


def _client(ctx: Ctx) -> StarletteOAuth2App:
    if ctx.oidc is None:
        raise HTTPException(404, "single sign-on is not configured here; log in with your Vaktrom account")
    return ctx.oidc


def _callback_url(request: Request, ctx: Ctx) -> str:
    base = ctx.settings.public_url.rstrip("/")
    return f"{base}/login/oidc/callback" if base else str(request.url_for("oidc_callback"))


async def _metadata(client: StarletteOAuth2App, ctx: Ctx) -> None:
    """Read the provider's metadata (once per process) and check that it names the configured issuer.
    Authlib checks an ID token's `iss` against the metadata's issuer, and accounts are keyed by the
    configured one, so the two must be the same provider (OpenID Connect Discovery requires them
    identical); a page, not a 500, when the metadata cannot be read or names another issuer."""
    refused = _REFUSED.get(client)
    if refused is not None and time.monotonic() - refused < REREAD_S:
        raise HTTPException(502, _MISCONFIGURED)  # not read again on every anonymous request
    try:
        metadata = await client.load_server_metadata()
    except Exception as exc:  # unreachable, or an answer that is no JSON: whatever the library raises
        log.warning("the OpenID provider's metadata could not be read: %s", exc)
        raise HTTPException(502, _NO_ANSWER) from None
    named = metadata.get("issuer") if isinstance(metadata, dict) else None
    if not isinstance(named, str) or named.rstrip("/") != ctx.settings.oidc_issuer.rstrip("/"):
        client.server_metadata.clear()  # Authlib keeps it for good: read it again once fixed
        _REFUSED[client] = time.monotonic()
        log.warning(
            "the OpenID provider's metadata names the issuer %.200r, not VAKTROM_OIDC_ISSUER (%r): "
            "logins through it are refused until they are the same (read again at most every %d s)",
            named, ctx.settings.oidc_issuer, REREAD_S,
        )  # fmt: skip
        raise HTTPException(502, _MISCONFIGURED)
    _REFUSED.pop(client, None)


@oidc_router.get("/login/oidc", openapi_extra=scope("public"))
async def oidc_start(request: Request, ctx: Ctx, next: str = "/") -> Response:
    """To the provider's login page; back at /login/oidc/callback."""
    client = _client(ctx)
    request.session.clear()  # one login at a time per browser: an older unfinished one is dropped
    request.session[_NEXT] = safe_next(next)
    await _metadata(client, ctx)
    try:
        response: Response = await client.authorize_redirect(request, _callback_url(request, ctx))
    # Metadata without what a login needs, whatever the library raises it as: a page, not a 500.
    except Exception as exc:
        log.warning("the OpenID provider's metadata could not be used: %s", exc)
        raise HTTPException(502, _NO_ANSWER) from None
    return response


_NOT_COMPLETED = (
    "the login through the hospital's login did not complete (it was interrupted, too old, or not this "
    "browser's); start it again from the login page"
)


@oidc_router.get("/login/oidc/callback", openapi_extra=scope("public"))
async def oidc_callback(request: Request, ctx: Ctx) -> Response:
    """Back from the provider: tokens for the code, an account for the claims, a session."""
    client = _client(ctx)
    next_ = safe_next(str(request.session.get(_NEXT, "/")))
    state = request.query_params.get("state", "")
    if not state or f"_state_{client.name}_{state}" not in request.session:
        # not a login this browser started: nothing to audit (the library would raise the
        # provider's `error` text first, letting anyone write it into the audit log)
        request.session.clear()
        raise HTTPException(400, _NOT_COMPLETED)
    try:
        await _metadata(client, ctx)  # this instance may not have read it yet (another took the start)
    except HTTPException:
        request.session.clear()
        raise
    try:
        token: dict[str, Any] = await client.authorize_access_token(request)
    except httpx.HTTPError as exc:
        request.session.clear()
        log.warning("the OpenID provider's token endpoint did not answer: %s", exc)
        raise HTTPException(502, _NO_ANSWER) from None
    except (OAuthError, JoseError) as exc:  # refused by the provider, or an ID token that fails a check
        request.session.clear()
        reason = f"{exc.error}: {exc.description}" if exc.description else str(exc.error)
        await asyncio.to_thread(ctx.audit, request, None, "login_failed", detail={"sso": reason[:200]})
        raise HTTPException(400, _NOT_COMPLETED) from None
    # Garbage from the provider (a token answer that is no JSON object, metadata without keys):
    # whatever the library raises it as, a page, not a 500; only the kind is logged.
    except Exception as exc:
        request.session.clear()
        log.warning("the OpenID provider answered the login with something unusable (%s)", type(exc).__name__)
        raise HTTPException(502, _NO_ANSWER) from None
    request.session.clear()
    claims = dict(token.get("userinfo") or {})
    rules = ctx.settings.claim_rules
    assert rules is not None  # the client exists only with single sign-on configured
    try:
        username = await asyncio.to_thread(_sign_in, ctx, claims, rules)
    except sso.NoAccessError as exc:
        await asyncio.to_thread(
            ctx.audit, request, None, "login_refused",
            target=str(claims.get("preferred_username") or claims.get("sub") or "")[:64],
            detail={"sso": str(exc)},
        )  # fmt: skip
        context = {"user": None, "reason": exc.msgid, "params": exc.params, "label": ctx.settings.oidc_label}
        return ctx.render(request, "no_access.html", context, status_code=403)
    secret = await asyncio.to_thread(_new_session, ctx, request, username, str(token.get("id_token") or ""))
    await asyncio.to_thread(ctx.audit, request, username, "login", detail={"via": "sso"})
    response = RedirectResponse(next_, status_code=303)
    response.set_cookie(
        COOKIE, secret, max_age=int(ctx.session_life.total_seconds()), httponly=True,
        secure=ctx.settings.cookie_secure or request.url.scheme == "https", samesite="strict", path="/",
    )  # fmt: skip
    return response


def _sign_in(ctx: Ctx, claims: dict[str, Any], rules: sso.ClaimRules) -> str:
    with ctx.db() as conn:
        return sso.sign_in(conn, issuer=ctx.settings.oidc_issuer, claims=claims, rules=rules)


def _new_session(ctx: Ctx, request: Request, username: str, id_token: str) -> str:
    with ctx.db() as conn:
        return accounts.new_session(
            conn, username, kind="browser", lifetime=ctx.session_life, ip=client_ip(request),
            id_token=id_token or None,
        )  # fmt: skip


async def oidc_logout_url(ctx: Ctx, request: Request, id_token: str) -> str | None:
    """The provider's end-session address for a session it started (with `id_token_hint`, and back to
    our login page), or None when it has none or does not answer (the local session is over anyway)."""
    if ctx.oidc is None:
        return None
    base = ctx.settings.public_url.rstrip("/")
    back = f"{base}/login" if base else str(request.url_for("login_page"))
    try:
        found: dict[str, Any] = await ctx.oidc.create_logout_url(
            post_logout_redirect_uri=back, id_token_hint=id_token, client_id=ctx.settings.oidc_client_id
        )
    # No end-session endpoint, or the provider is down: the local session is over anyway.
    except Exception as exc:
        log.warning("no logout at the OpenID provider: %s", exc)
        return None
    url = found.get("url")
    return url if isinstance(url, str) else None
