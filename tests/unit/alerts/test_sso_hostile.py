"""Reviewer's reproducers for the single sign-on (rev-oidc). Each test states the behaviour the
review expects; the ones marked FINDING fail on the code as merged."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from authlib.integrations.starlette_client import OAuth
from fastapi import HTTPException
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.requests import Request

from alerts.accounts import Role
from alerts.console import oidc_pages
from alerts.settings import AlertsSettings
from alerts.sso import ClaimRules, NoAccessError, grant_of
from runtime.settings import ConfigError

RULES = ClaimRules(
    role_claim="roles",
    team_claim="team",
    role_map={"sykepleier": Role.NURSE, "it": Role.ADMIN},
    centre_roles=frozenset({Role.ADMIN}),
)


# --- FINDING: a present but malformed team claim is read as "no team" -> every team ------------------
@pytest.mark.parametrize("team", [7, {"id": "team-a"}, [7], True, [None]])
def test_a_centre_role_with_a_malformed_team_claim_is_refused_not_given_every_team(team: Any) -> None:
    """A team claim that is present but not a string (a number from the directory, an object) must
    not widen a centre role bound to one team into every team: refuse instead."""
    with pytest.raises(NoAccessError):
        grant_of({"sub": "x", "roles": ["it"], "team": team}, RULES)


@pytest.mark.parametrize("team", [["team-a", 7], ["team-a", {"id": "team-b"}]])
def test_a_team_list_with_non_string_members_is_refused(team: Any) -> None:
    """["team-a", 7]: the provider names two things as the team; "more than one team" applies."""
    with pytest.raises(NoAccessError):
        grant_of({"sub": "x", "roles": ["sykepleier"], "team": team}, RULES)


# --- FINDING: provider garbage ends in a 500 at /login/oidc/callback ----------------------------------
METADATA = {
    "issuer": "https://idp.example/realms/x",
    "authorization_endpoint": "https://idp.example/auth",
    "token_endpoint": "https://idp.example/token",
    "jwks_uri": "https://idp.example/jwks",
}


def _callback(handler: Any, metadata: dict[str, Any] | None = None) -> Any:
    """Run oidc_callback against a provider answering with `handler`, with a valid state waiting."""
    oauth = OAuth()
    client = oauth.register(
        "hospital", client_id="vaktrom", client_secret="s",  # noqa: S106 server_metadata_url="https://idp.example/.wk",
        client_kwargs={"scope": "openid", "code_challenge_method": "S256",
                       "transport": httpx.MockTransport(handler)},
    )  # fmt: skip
    client.server_metadata = dict(metadata if metadata is not None else METADATA)
    client.server_metadata["_loaded_at"] = 1e18
    session = {
        "_state_hospital_S": {
            "data": {
                "redirect_uri": "https://c/login/oidc/callback",
                "nonce": "n",
                "code_verifier": "v" * 48,
            },
            "exp": 1e18,
        }
    }
    scope = {"type": "http", "method": "GET", "path": "/login/oidc/callback",
             "query_string": b"code=c&state=S", "headers": [], "session": session}  # fmt: skip
    audits: list[Any] = []
    ctx = SimpleNamespace(
        oidc=client,
        settings=SimpleNamespace(oidc_issuer=METADATA["issuer"]),
        audit=lambda *a, **k: audits.append(a),
    )
    return asyncio.run(oidc_pages.oidc_callback(Request(scope), ctx))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, text="<html>gateway says hi</html>"),  # a proxy's page with 200
        httpx.Response(200, json=["not", "an", "object"]),
    ],
)
def test_a_token_endpoint_answering_garbage_gives_a_page_not_a_500(answer: httpx.Response) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return answer

    with pytest.raises(HTTPException) as err:
        _callback(handler)
    assert err.value.status_code in (400, 502)


def test_jwks_answering_garbage_gives_a_page_not_a_500() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(
                200, json={"access_token": "a", "token_type": "Bearer", "id_token": "x.y.z"}
            )
        return httpx.Response(200, content=json.dumps({"keys": "nope"}).encode())

    with pytest.raises(HTTPException) as err:
        _callback(handler)
    assert err.value.status_code in (400, 502)


def test_metadata_without_jwks_uri_gives_a_page_not_a_500() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": "a", "token_type": "Bearer", "id_token": "x.y.z"})

    metadata = {k: v for k, v in METADATA.items() if k != "jwks_uri"}
    with pytest.raises(HTTPException) as err:
        _callback(handler, metadata)
    assert err.value.status_code in (400, 502)


def test_metadata_answering_garbage_at_the_callback_gives_a_page_not_a_500() -> None:
    """Another instance took the start (the doc's "every instance accepts it"): this one fetches the
    metadata first, and the provider (or a proxy before it) answers a page instead of JSON."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="<html>maintenance</html>")

    oauth = OAuth()
    client = oauth.register(
        "hospital", client_id="vaktrom", client_secret="s",  # noqa: S106 server_metadata_url="https://idp.example/.wk",
        client_kwargs={"scope": "openid", "code_challenge_method": "S256",
                       "transport": httpx.MockTransport(handler)},
    )  # fmt: skip
    session = {"_state_hospital_S": {"data": {"redirect_uri": "https://c/cb", "nonce": "n"}, "exp": 1e18}}
    scope = {"type": "http", "method": "GET", "path": "/login/oidc/callback",
             "query_string": b"code=c&state=S", "headers": [], "session": session}  # fmt: skip
    ctx = SimpleNamespace(
        oidc=client, settings=SimpleNamespace(oidc_issuer=METADATA["issuer"]), audit=lambda *a, **k: None
    )
    with pytest.raises(HTTPException) as err:
        asyncio.run(oidc_pages.oidc_callback(Request(scope), ctx))  # type: ignore[arg-type]
    assert err.value.status_code in (400, 502)


# --- FINDING (low): anyone can write text of their choosing into the audit log ------------------------
def test_an_error_callback_without_this_browsers_state_writes_no_audit_entry() -> None:
    """/login/oidc/callback?error=..&error_description=.. with no login under way: authlib raises the
    provider's error before it looks at the state, and the callback audits `login_failed` with the
    attacker's text. Only a callback for a login this browser started should reach the audit log."""
    oauth = OAuth()
    client = oauth.register(
        "hospital", client_id="vaktrom", client_secret="s",  # noqa: S106
        server_metadata_url="https://idp.example/.wk",
    )  # fmt: skip
    q = b"error=access_denied&error_description=admin+anna+approved+export+of+all+patients"
    scope = {"type": "http", "method": "GET", "path": "/login/oidc/callback", "query_string": q,
             "headers": [], "session": {}}  # fmt: skip
    audits: list[Any] = []
    ctx = SimpleNamespace(
        oidc=client,
        settings=SimpleNamespace(oidc_issuer=METADATA["issuer"]),
        audit=lambda *a, **k: audits.append(k),
    )
    with pytest.raises(HTTPException):
        asyncio.run(oidc_pages.oidc_callback(Request(scope), ctx))  # type: ignore[arg-type]
    assert audits == []


# --- settings ---------------------------------------------------------------------------------------
OIDC = {
    "VAKTROM_OIDC_ISSUER": "https://login.hospital.example/realms/staff",
    "VAKTROM_OIDC_CLIENT_ID": "vaktrom",
}


def test_a_short_client_secret_is_refused_at_start_up() -> None:
    """FINDING (low): the state cookie's key is HMAC(client secret, constant), and anyone can fetch a
    signed `vaktrom_oidc` cookie from /login/oidc: an offline oracle for the client secret. A secret
    a person typed (ADFS, Keycloak allow it) falls to it; demand a provider-made length."""

    with pytest.raises(ConfigError, match="VAKTROM_OIDC_CLIENT_SECRET"):
        AlertsSettings.from_env(OIDC | {"VAKTROM_OIDC_CLIENT_SECRET": "hospital1"})


@pytest.mark.parametrize(
    "issuer",
    ["http://localhost.evil.example/r", "http://localhost@evil.example/r", "http://evil.example#@localhost",
     "http://127.0.0.1.nip.io/r", "http://0.0.0.0/r", "http://[::ffff:127.0.0.1]/r"],
)  # fmt: skip
def test_plain_http_issuers_that_only_look_local_are_refused(issuer: str) -> None:
    """Held: the host is parsed (urlsplit, which httpx agrees with), not matched as text."""

    with pytest.raises(ConfigError, match="VAKTROM_OIDC_ISSUER"):
        AlertsSettings.from_env(
            OIDC | {"VAKTROM_OIDC_CLIENT_SECRET": "x" * 32, "VAKTROM_OIDC_ISSUER": issuer}
        )


# --- the provider's metadata names another issuer than the one configured -----------------------------
def _client(handler: Any) -> Any:
    oauth = OAuth()
    client = oauth.register(
        "hospital", client_id="vaktrom", client_secret="s",  # noqa: S106
        server_metadata_url="https://idp.example/realms/x/.well-known/openid-configuration",
        client_kwargs={"scope": "openid", "code_challenge_method": "S256",
                       "transport": httpx.MockTransport(handler)},
    )  # fmt: skip
    return client


@pytest.mark.parametrize("named", ["https://evil.example/realms/x", "https://idp.example/realms/y", None, 7])
def test_metadata_naming_another_issuer_stops_the_login_before_the_provider_and_at_the_callback(
    named: Any,
) -> None:
    """Authlib would accept ID tokens of whatever issuer the metadata names, while accounts are keyed
    by the configured one: neither the start nor the callback goes on, and the token endpoint is
    never asked."""
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        if request.url.path.endswith("/openid-configuration"):
            return httpx.Response(200, json={**METADATA, "issuer": named})
        return httpx.Response(200, json={"access_token": "a", "token_type": "Bearer", "id_token": "x.y.z"})

    settings = SimpleNamespace(oidc_issuer=METADATA["issuer"], public_url="https://c")
    ctx = SimpleNamespace(oidc=_client(handler), settings=settings, audit=lambda *a, **k: None)
    start = {"type": "http", "method": "GET", "path": "/login/oidc", "query_string": b"",
             "headers": [], "session": {}}  # fmt: skip
    with pytest.raises(HTTPException) as err:
        asyncio.run(oidc_pages.oidc_start(Request(start), ctx))  # type: ignore[arg-type]
    assert err.value.status_code == 502
    assert "not set up correctly" in err.value.detail
    session = {"_state_hospital_S": {"data": {"redirect_uri": "https://c/cb", "nonce": "n"}, "exp": 1e18}}
    back = {"type": "http", "method": "GET", "path": "/login/oidc/callback",
            "query_string": b"code=c&state=S", "headers": [], "session": session}  # fmt: skip
    with pytest.raises(HTTPException) as err:
        asyncio.run(oidc_pages.oidc_callback(Request(back), ctx))  # type: ignore[arg-type]
    assert err.value.status_code == 502
    assert session == {}
    assert all(path.endswith("/openid-configuration") for path in asked)


def test_the_configured_issuer_with_a_trailing_slash_is_the_same_issuer() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=METADATA)

    settings = SimpleNamespace(oidc_issuer=METADATA["issuer"] + "/", public_url="https://c")
    ctx = SimpleNamespace(oidc=_client(handler), settings=settings, audit=lambda *a, **k: None)
    start = {"type": "http", "method": "GET", "path": "/login/oidc", "query_string": b"",
             "headers": [], "session": {}}  # fmt: skip
    response = asyncio.run(oidc_pages.oidc_start(Request(start), ctx))  # type: ignore[arg-type]
    assert response.status_code == 302
    assert response.headers["location"].startswith(METADATA["authorization_endpoint"])


def test_a_provider_that_fixes_its_issuer_is_accepted_without_a_restart() -> None:
    """(Reviewer's reproducer) The usual cause of a mismatch is the provider's own hostname setting
    (Keycloak behind a proxy naming http://internal:8080/...). Authlib keeps the metadata it read for
    good; once the provider names the right issuer, a login after REREAD_S works. Within REREAD_S the
    provider is not asked again (anonymous hits on /login/oidc cannot make the service fetch it)."""
    answers = [{**METADATA, "issuer": "http://keycloak:8080/realms/x"}, METADATA]
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.url.path)
        return httpx.Response(200, json=answers[0] if len(answers) == 1 else answers.pop(0))

    client = _client(handler)
    settings = SimpleNamespace(oidc_issuer=METADATA["issuer"], public_url="https://c")
    ctx = SimpleNamespace(oidc=client, settings=settings, audit=lambda *a, **k: None)

    def start() -> Any:
        scope = {"type": "http", "method": "GET", "path": "/login/oidc", "query_string": b"",
                 "headers": [], "session": {}}  # fmt: skip
        return asyncio.run(oidc_pages.oidc_start(Request(scope), ctx))  # type: ignore[arg-type]

    with pytest.raises(HTTPException):
        start()  # misconfigured provider: refused, as intended
    with pytest.raises(HTTPException):
        start()  # and not asked again at once
    assert len(asked) == 1
    oidc_pages._REFUSED[client] -= oidc_pages.REREAD_S  # a minute later
    assert start().status_code == 302, "still refused after the provider was fixed"
    assert len(asked) == 2


# --- an ID token whose signature is not the provider's --------------------------------------------------
def _signed_in(sign_with: Any, published: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[str]]:
    """The callback with a provider that publishes `published` and hands out an ID token signed with
    `sign_with` (claiming the published key's id); (the answer or the HTTPException, audit actions)."""
    now = int(time.time())
    claims = {"iss": METADATA["issuer"], "sub": "u-1", "aud": "vaktrom", "iat": now, "exp": now + 300,
              "nonce": "n", "roles": ["sykepleier"], "team": "team-a"}  # fmt: skip
    id_token = jwt.encode({"alg": "RS256", "kid": "k1"}, claims, sign_with)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(
                200, json={"access_token": "a", "token_type": "Bearer", "id_token": id_token}
            )
        return httpx.Response(200, json={"keys": [published.as_dict(private=False)]})

    client = _client(handler)
    client.server_metadata = {**METADATA, "_loaded_at": 1e18}
    session = {"_state_hospital_S": {"data": {"redirect_uri": "https://c/login/oidc/callback", "nonce": "n",
                                              "code_verifier": "v" * 48}, "exp": 1e18}}  # fmt: skip
    scope = {"type": "http", "method": "GET", "path": "/login/oidc/callback",
             "query_string": b"code=c&state=S", "headers": [], "session": session}  # fmt: skip
    audits: list[str] = []
    settings = SimpleNamespace(oidc_issuer=METADATA["issuer"], claim_rules=RULES, cookie_secure=True)
    ctx = SimpleNamespace(oidc=client, settings=settings, session_life=timedelta(hours=8),
                          audit=lambda request, who, action, **k: audits.append(action))  # fmt: skip
    monkeypatch.setattr(oidc_pages, "_sign_in", lambda ctx, claims, rules: f"sso-{claims['sub']}")
    monkeypatch.setattr(oidc_pages, "_new_session", lambda ctx, request, username, id_token: "secret")
    try:
        return asyncio.run(oidc_pages.oidc_callback(Request(scope), ctx)), audits  # type: ignore[arg-type]
    except HTTPException as exc:
        return exc, audits


def test_an_id_token_not_signed_by_the_providers_key_gets_no_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token signed with another key under the provider's key id is refused (400, `login_failed`
    audited, no cookie); the same token signed with the provider's key logs in (the control)."""
    provider = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    forger = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    refused, audits = _signed_in(forger, provider, monkeypatch)
    assert isinstance(refused, HTTPException)
    assert refused.status_code == 400
    assert audits == ["login_failed"]
    accepted, audits = _signed_in(provider, provider, monkeypatch)
    assert not isinstance(accepted, HTTPException), accepted.detail
    assert accepted.status_code == 303
    assert "vaktrom_session=secret" in accepted.headers["set-cookie"]
    assert audits == ["login"]
