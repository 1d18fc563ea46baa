"""The console's response headers and its proxy settings, without services (issue #28, finding 4)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from alerts.console.security import CONTENT_SECURITY_POLICY, SecurityHeaders, trust_proxies
from alerts.settings import AlertsSettings
from runtime.settings import ConfigError


def _app(proxies: list[str]) -> FastAPI:
    app = FastAPI()

    @app.get("/where")
    async def where() -> PlainTextResponse:
        return PlainTextResponse("here")

    app.add_middleware(SecurityHeaders)
    trust_proxies(app, proxies)
    return app


def _get(
    app: FastAPI, url: str, *, peer: str = "10.0.0.9", headers: dict[str, str] | None = None
) -> httpx.Response:
    """One request to the app in-process, as if from `peer` (httpx's ASGI transport; no server)."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=(peer, 50000))
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.get(url, headers=headers)

    return asyncio.run(send())


def test_every_response_has_the_headers_and_hsts_only_on_https() -> None:
    """CSP, framing, sniffing and referrer headers on a page and on a 404; HSTS only over https."""
    app = _app([])
    for path in ("/where", "/nowhere"):
        response = _get(app, f"http://console.test{path}")
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
        assert "strict-transport-security" not in response.headers
    secure = _get(app, "https://console.test/where")
    assert secure.headers["strict-transport-security"].startswith("max-age=31536000")


def test_the_policy_allows_no_inline_script_and_no_framing() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


def test_forwarded_https_is_believed_only_from_a_trusted_proxy() -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.4"}
    app = _app(["10.0.0.5", "172.16.0.0/12"])
    for proxy in ("10.0.0.5", "172.18.0.2"):
        assert (
            "strict-transport-security"
            in _get(app, "http://c.test/where", peer=proxy, headers=forwarded).headers
        )
    for other in ("10.0.0.6", "192.0.2.1"):
        assert (
            "strict-transport-security"
            not in _get(app, "http://c.test/where", peer=other, headers=forwarded).headers
        )


@pytest.mark.parametrize(
    ("given", "parsed"),
    [("", []), ("10.0.0.5", ["10.0.0.5"]), (" 10.0.0.5 , 172.16.0.0/12", ["10.0.0.5", "172.16.0.0/12"]),
     ("10.1.2.3/32,::1", ["10.1.2.3", "::1"])],
)  # fmt: skip
def test_trusted_proxies_are_addresses_or_networks(given: str, parsed: list[str]) -> None:
    assert AlertsSettings.from_env({"VAKTROM_ALERTS_TRUSTED_PROXIES": given}).proxies == parsed


@pytest.mark.parametrize("given", ["*", "proxy.example", "10.0.0.300", "10.0.0.0/33"])
def test_a_name_or_wildcard_as_trusted_proxy_fails_at_start(given: str) -> None:
    with pytest.raises(ConfigError, match="VAKTROM_ALERTS_TRUSTED_PROXIES"):
        AlertsSettings.from_env({"VAKTROM_ALERTS_TRUSTED_PROXIES": given})


@pytest.mark.parametrize(("days", "ok"), [(0, False), (1, True), (90, True), (91, False), (365, False)])
def test_the_token_lifetime_setting_is_bounded_at_90_days(days: int, ok: bool) -> None:
    env = {"VAKTROM_ALERTS_TOKEN_DAYS": str(days)}
    if ok:
        assert AlertsSettings.from_env(env).token_days == days
    else:
        with pytest.raises(ConfigError, match="VAKTROM_ALERTS_TOKEN_DAYS"):
            AlertsSettings.from_env(env)
