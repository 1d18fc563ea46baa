"""What every response of the console and the API carries, and whom the service believes about
the client's address and scheme (docs/console-security.md).

    SecurityHeaders     Content-Security-Policy (no inline script, no framing), Referrer-Policy,
                        X-Content-Type-Options, and HSTS on https
    trust_proxies()     X-Forwarded-For / X-Forwarded-Proto from the configured proxies only

Behind a TLS-terminating proxy the service itself speaks plain http; it learns the real scheme and
client from the proxy's headers. Believing those headers from anyone would let a client choose its
own address (the login limiter and the audit log would record a made-up one), so only the
addresses in VAKTROM_ALERTS_TRUSTED_PROXIES are listened to; by default nobody is.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

__all__ = ["CONTENT_SECURITY_POLICY", "HSTS", "SecurityHeaders", "form_action_origin", "trust_proxies"]

# Scripts, styles, images and connections from this site only; no inline script or style attribute,
# no plug-ins, no <base> tricks, forms post only here, and no other site may frame the console
# (clickjacking a "resolve" button).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
HSTS = "max-age=31536000; includeSubDomains"

_ALWAYS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-frame-options", b"DENY"),  # frame-ancestors for browsers that predate it
    # Same-origin only: alert and patient ids in URLs stay out of other sites' logs. Not
    # no-referrer: with it Chromium sends `Origin: null` on form posts, which the CSRF check refuses.
    (b"referrer-policy", b"same-origin"),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


def form_action_origin(issuer: str) -> str | None:
    """The OpenID provider's origin (scheme://host[:port]) for `form-action`, or None without one:
    the logout form's answer redirects there, and browsers hold a form's redirects to `form-action`."""
    parts = urlsplit(issuer)
    return f"{parts.scheme}://{parts.netloc}" if issuer and parts.scheme and parts.netloc else None


class SecurityHeaders:
    """ASGI middleware: the headers above on every HTTP response (pages, API, static files, errors
    and the event stream alike); HSTS only when the request came over https (directly or through a
    trusted proxy), since a browser ignores it on http and it must not pin a plain-http test set-up.
    `form_action`: one more origin forms may lead to (the single-sign-on provider's, for logout)."""

    def __init__(self, app: ASGIApp, form_action: str | None = None) -> None:
        self.app = app
        self.always = list(_ALWAYS)
        if form_action:
            policy = CONTENT_SECURITY_POLICY.replace(
                "form-action 'self'", f"form-action 'self' {form_action}"
            )
            self.always[0] = (b"content-security-policy", policy.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = list(self.always)
        if scope.get("scheme") == "https":
            extra.append((b"strict-transport-security", HSTS.encode()))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *((name, value) for name, value in extra if name not in present),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def trust_proxies(app: FastAPI, proxies: list[str]) -> None:
    """Believe X-Forwarded-For and X-Forwarded-Proto when, and only when, the connection comes from
    one of `proxies` (addresses or networks). Added last, so it runs first: everything after it
    (the security headers, the Origin check, the cookie, the limiter, the audit log) sees the
    client's address and scheme."""
    if proxies:
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=proxies)
