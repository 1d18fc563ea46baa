"""Attacks on the console, its API and its database, as issue #28 (finding 4) found them possible.

Each test drives the running service (`python -m alerts`) from outside, over HTTP with httpx, the
operators' command line or psql, and shows a refusal. Classes: a network attacker (forged proxy
headers, framing, guessing passwords in parallel), an insider whose account should have ended
(deactivation, role change, revoked or long-lived tokens). A compromised application (its database
role tampering with the audit log) is in test_attack_database_roles.py.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from alerts.accounts import AccountError, Role, new_session
from tests.conftest import REPO, Stack
from tests.integration.alerts_support import PASSWORD, AlertsProcess, ConsoleClient, bearer, staff

PROXY = "127.0.0.2"  # a loopback address of its own: the trusted proxy; tests speak from 127.0.0.1 otherwise


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url) as connection:
        yield connection


@pytest.fixture
def service(alerts: AlertsProcess) -> AlertsProcess:
    """The service behind a proxy at 127.0.0.2; Secure cookies stay on (the default)."""
    alerts.extra_env["VAKTROM_ALERTS_TRUSTED_PROXIES"] = PROXY
    alerts.start()
    return alerts


def _client(*, via_proxy: bool, headers: dict[str, str] | None = None) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=PROXY if via_proxy else "127.0.0.1")
    return httpx.Client(transport=transport, headers=headers or {}, timeout=20, follow_redirects=False)


def _audited_ips(conn: psycopg.Connection[Any], action: str, target: str) -> list[str | None]:
    rows = conn.execute(
        "SELECT host(ip) FROM audit.audit_log WHERE action = %s AND target = %s ORDER BY entry_id",
        (action, target),
    ).fetchall()
    conn.rollback()
    return [r[0] for r in rows]


def _failure_ips(conn: psycopg.Connection[Any], username: str) -> list[str | None]:
    rows = conn.execute("SELECT host(ip) FROM login_failures WHERE username = %s", (username,)).fetchall()
    conn.rollback()
    return [r[0] for r in rows]


def _admin(cli: list[str], stack: Stack) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alerts.admin", *cli], capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, **stack.env, "PYTHONPATH": str(REPO)},
    )  # fmt: skip


# ------------------------------------------------------------------ proxy headers
def test_only_a_trusted_proxy_may_name_the_clients_address(
    service: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """Finding 4, network attacker: X-Forwarded-For from an untrusted peer changes neither the login
    limiter's nor the audit log's address, while the configured proxy's is believed."""
    spoofed, forwarded = staff(conn, Role.NURSE), staff(conn, Role.NURSE)
    with _client(via_proxy=False, headers={"X-Forwarded-For": "203.0.113.9"}) as direct:
        assert (
            direct.post(f"{service.url}/login", data={"username": spoofed, "password": "wrong!"}).status_code
            == 401
        )
    with _client(via_proxy=True, headers={"X-Forwarded-For": "198.51.100.7"}) as proxy:
        assert (
            proxy.post(f"{service.url}/login", data={"username": forwarded, "password": "wrong!"}).status_code
            == 401
        )
    assert _failure_ips(conn, spoofed) == ["127.0.0.1"]
    assert _audited_ips(conn, "login_failed", spoofed) == ["127.0.0.1"]
    assert _failure_ips(conn, forwarded) == ["198.51.100.7"]
    assert _audited_ips(conn, "login_failed", forwarded) == ["198.51.100.7"]


def test_behind_a_trusted_https_proxy_the_origin_check_and_secure_cookie_work(
    service: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """Finding 4, network attacker: through the TLS proxy the console knows it is served over https
    (Secure cookie, HSTS, a same-site Origin accepted); the same claim of https from anyone else is
    not believed, so a cross-scheme Origin is still refused."""
    nurse = staff(conn, Role.NURSE)
    site = "https://console.example"
    https = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "198.51.100.8", "Host": "console.example"}
    client = ConsoleClient(service.url, http=_client(via_proxy=True, headers=https))
    try:
        response = client.login(nurse)
        assert response.status_code == 303
        assert re.search(r";\s*secure", response.headers["set-cookie"], re.IGNORECASE)
        assert response.headers["strict-transport-security"].startswith("max-age=")
        # a same-site request from the https page: past the Origin and CSRF checks (the alert is unknown)
        claim = client.post(
            "/api/v1/alerts/no-such-alert/claim", headers={"Origin": site, "X-CSRF-Token": client.csrf}
        )
        assert claim.status_code == 404, claim.text
        cross = client.post(
            "/api/v1/alerts/no-such-alert/claim",
            headers={"Origin": "https://evil.example", "X-CSRF-Token": client.csrf},
        )
        assert cross.status_code == 403
    finally:
        client.close()
    forged = ConsoleClient(service.url, http=_client(via_proxy=False, headers=https))
    try:
        forged.cookie, forged.csrf = client.cookie, client.csrf
        refused = forged.post(
            "/api/v1/alerts/no-such-alert/claim", headers={"Origin": site, "X-CSRF-Token": client.csrf}
        )
        assert refused.status_code == 403, "https claimed by a client that is not the proxy"
        assert "strict-transport-security" not in refused.headers
    finally:
        forged.close()


# ------------------------------------------------------------------ security headers
def test_another_sites_form_cannot_log_the_browser_in(
    service: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """Finding 4, network attacker (login CSRF): a form on another site posting the attacker's own
    username and password to /login gets no session cookie, so the nurse's browser is not quietly
    working under the attacker's account; the console's own login page still works."""
    attacker = staff(conn, Role.NURSE)
    with _client(via_proxy=False) as client:
        forged = client.post(
            f"{service.url}/login",
            data={"username": attacker, "password": PASSWORD},
            headers={"Origin": "https://evil.example"},
        )
        assert forged.status_code == 403
        assert "set-cookie" not in forged.headers
        own = client.post(
            f"{service.url}/login", data={"username": attacker, "password": PASSWORD},
            headers={"Origin": service.url},
        )  # fmt: skip
        assert own.status_code == 303, own.text


def test_every_page_and_api_response_carries_the_security_headers(
    service: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """Finding 4, network attacker (framing, injected script, sniffing, leaking ids in Referer): each
    page, fragment, API answer, static file and error has CSP without inline script and with
    frame-ancestors 'none', nosniff and a Referrer-Policy; no page holds inline script."""
    nurse, admin = staff(conn, Role.NURSE), staff(conn, Role.ADMIN)
    paths = {
        None: ["/login", "/api/v1/me", "/static/console.js", "/api/openapi.json", "/healthz", "/nowhere"],
        nurse: ["/", "/queue/rows", "/patients", "/alerts/no-such-alert", "/api/v1/queue",
                "/api/v1/me/tokens", "/status/banner", "/admin/users"],
        admin: ["/admin/users", "/admin/audit", "/admin/quarantine", "/kits", "/api/v1/users"],
    }  # fmt: skip
    seen = 0
    for who, urls in paths.items():
        client = ConsoleClient(service.url)
        try:
            if who is not None:
                assert client.login(who).status_code == 303
            for path in urls:
                response = client.get(path)
                csp = response.headers.get("content-security-policy", "")
                assert "frame-ancestors 'none'" in csp, (path, response.status_code)
                script = next(d for d in csp.split(";") if d.strip().startswith("script-src"))
                assert script.split()[1:] == ["'self'"], (path, csp)
                assert response.headers.get("x-content-type-options") == "nosniff", path
                assert response.headers.get("referrer-policy") == "same-origin", path
                assert "strict-transport-security" not in response.headers, "not on plain http"
                if response.headers.get("content-type", "").startswith("text/html"):
                    assert not re.search(r"<script(?![^>]*\bsrc=)", response.text), path
                    assert not re.search(r"\son[a-z]+=", response.text), path
                    assert not re.search(r"\sstyle=", response.text), path
                seen += 1
        finally:
            client.close()
    assert seen == sum(len(u) for u in paths.values())


# ------------------------------------------------------------------ account lifecycle
def test_a_deactivated_users_session_and_token_are_refused_at_once(
    service: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """Finding 4, insider whose account ends: after an administrator deactivates the account over the
    API, its console session and its bearer token are refused on their next request."""
    nurse, admin = staff(conn, Role.NURSE), staff(conn, Role.ADMIN)
    token, by_admin = bearer(conn, nurse), bearer(conn, admin)
    browser = ConsoleClient(service.url)
    try:
        assert browser.login(nurse).status_code == 303
        assert browser.get("/api/v1/me").status_code == 200
        assert httpx.get(f"{service.url}/api/v1/me", headers=token).status_code == 200
        done = httpx.post(f"{service.url}/api/v1/users/{nurse}/deactivate", headers=by_admin)
        assert done.status_code == 200, done.text
        assert done.json()["sessions_ended"] == 2
        assert browser.get("/api/v1/me").status_code == 401
        assert httpx.get(f"{service.url}/api/v1/me", headers=token).status_code == 401
        assert browser.login(nurse).status_code == 401, "a disabled account cannot log in again"
    finally:
        browser.close()
    assert _audited_ips(conn, "deactivate_user", nurse) == ["127.0.0.1"]
    # a nurse may not do it to a colleague
    other = staff(conn, Role.NURSE)
    assert (
        httpx.post(f"{service.url}/api/v1/users/{other}/deactivate", headers=bearer(conn, other)).status_code
        == 403
    )


def test_a_deactivated_users_kit_pairing_codes_end_with_the_account(
    service: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """Finding 4, insider whose account ends: a pairing code a coordinator made (and saw) the day
    before she left cannot be claimed afterwards, which would hand her a kit's broker credentials
    (and lock the real kit out); a colleague's code still works."""
    team = f"t-{secrets.token_hex(6)}"
    conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, 'Attack test team')", (team,))
    conn.commit()
    leaver, colleague = staff(conn, Role.COORDINATOR, team), staff(conn, Role.COORDINATOR, team)
    admin = bearer(conn, staff(conn, Role.ADMIN))
    api = f"{service.url}/api/v1"
    kit, other_kit = f"attack-kit-{secrets.token_hex(6)}", f"attack-kit-{secrets.token_hex(6)}"
    for made in (kit, other_kit):
        assert httpx.post(f"{api}/kits", json={"kit_id": made}, headers=admin).status_code == 201
    hers = httpx.post(f"{api}/kits/{kit}/pairing", headers=bearer(conn, leaver))
    theirs = httpx.post(f"{api}/kits/{other_kit}/pairing", headers=bearer(conn, colleague))
    assert (hers.status_code, theirs.status_code) == (201, 201), hers.text
    assert httpx.post(f"{api}/users/{leaver}/deactivate", headers=admin).status_code == 200
    claimed = httpx.post(f"{api}/pairing/claim", json={"code": hers.json()["code"]})
    assert claimed.status_code == 404, claimed.text
    assert httpx.post(f"{api}/pairing/claim", json={"code": theirs.json()["code"]}).status_code == 200


def test_a_token_made_while_deactivation_ran_does_not_come_back_with_the_account(
    service: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """Finding 4, insider whose account ends: a token whose request checked the account just before
    an administrator deactivated it (here made straight after, as that request would) is refused,
    and stays refused when the account is activated again; it logs in afresh."""
    nurse, admin = staff(conn, Role.NURSE), bearer(conn, staff(conn, Role.ADMIN))
    assert httpx.post(f"{service.url}/api/v1/users/{nurse}/deactivate", headers=admin).status_code == 200
    raced = bearer(conn, nurse)
    assert httpx.get(f"{service.url}/api/v1/me", headers=raced).status_code == 401
    assert httpx.post(f"{service.url}/api/v1/users/{nurse}/activate", headers=admin).status_code == 200
    assert httpx.get(f"{service.url}/api/v1/me", headers=raced).status_code == 401
    browser = ConsoleClient(service.url)
    try:
        assert browser.login(nurse).status_code == 303
    finally:
        browser.close()


def test_a_role_or_team_change_ends_the_accounts_sessions(
    service: AlertsProcess, conn: psycopg.Connection[Any], stack: Stack
) -> None:
    """Finding 4, insider: the rights a token carried end when an operator changes the account's role
    (command line) or an administrator its team (API); the token of the old rights is refused."""
    coordinator = staff(conn, Role.COORDINATOR)
    old = bearer(conn, coordinator)
    changed = _admin(["user", "role", coordinator, "--role", "nurse"], stack)
    assert changed.returncode == 0, changed.stderr
    assert httpx.get(f"{service.url}/api/v1/me", headers=old).status_code == 401
    fresh = bearer(conn, coordinator)
    me = httpx.get(f"{service.url}/api/v1/me", headers=fresh).json()
    assert (me["role"], me["team_id"]) == ("nurse", None)
    team = f"t-{coordinator[-10:]}"
    conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, 'Attack test team')", (team,))
    conn.commit()
    admin = bearer(conn, staff(conn, Role.ADMIN))
    moved = httpx.post(
        f"{service.url}/api/v1/users/{coordinator}/role",
        headers=admin,
        json={"role": "nurse", "team_id": team},
    )
    assert moved.status_code == 200, moved.text
    assert httpx.get(f"{service.url}/api/v1/me", headers=fresh).status_code == 401
    actions = conn.execute(
        "SELECT action, actor LIKE 'cli:%%' FROM audit.audit_log "
        "WHERE target = %s AND action = 'change_role' ORDER BY entry_id", (coordinator,),
    ).fetchall()  # fmt: skip
    assert actions == [("change_role", True), ("change_role", False)]


def test_the_admin_command_adds_a_team_through_the_registry(
    stack: Stack, conn: psycopg.Connection[Any]
) -> None:
    """`python -m alerts.admin team add` adds a team as the registry's `team add` does (teams are the
    registry's), audited under the operator's `cli:` name; a team that exists is refused as before and
    keeps its name, and a bad id is refused with the rule, not a traceback."""
    team = f"admin-{uuid.uuid4().hex[:10]}"
    added = _admin(["team", "add", team, "Admin team"], stack)
    assert added.returncode == 0, added.stderr
    assert f"team {team} added" in added.stdout
    again = _admin(["team", "add", team, "Another name"], stack)
    assert again.returncode == 1
    assert "exists already" in again.stderr, again.stderr
    bad = _admin(["team", "add", "Not-Lowercase", "Bad"], stack)
    assert bad.returncode == 1
    assert "lowercase" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    assert conn.execute("SELECT name FROM teams WHERE team_id = %s", (team,)).fetchone() == ("Admin team",)
    assert conn.execute(
        "SELECT action, actor LIKE 'cli:%%' FROM audit.audit_log WHERE target = %s", (team,)
    ).fetchall() == [("registry.team.add", True)]
    conn.rollback()


def test_a_revoked_token_is_refused_and_nobody_revokes_anothers_by_id(
    service: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """Finding 4, insider: a user lists their tokens and revokes one by id (it is refused at once, the
    other keeps working); the same id through another user's /me is 404; an administrator revokes
    the rest."""
    nurse, colleague = staff(conn, Role.NURSE), staff(conn, Role.NURSE)
    first, second = bearer(conn, nurse), bearer(conn, nurse)
    listed = httpx.get(f"{service.url}/api/v1/me/tokens", headers=first)
    assert listed.status_code == 200
    ids = sorted(t["token_id"] for t in listed.json())
    assert len(ids) == 2
    assert all("token" not in t for t in listed.json()), "a listing never shows a secret"
    theirs = httpx.delete(f"{service.url}/api/v1/me/tokens/{ids[0]}", headers=bearer(conn, colleague))
    assert theirs.status_code == 404
    assert httpx.delete(f"{service.url}/api/v1/me/tokens/{ids[0]}", headers=second).status_code == 204
    assert httpx.get(f"{service.url}/api/v1/me", headers=first).status_code == 401
    assert httpx.get(f"{service.url}/api/v1/me", headers=second).status_code == 200
    admin = bearer(conn, staff(conn, Role.ADMIN))
    assert [
        t["token_id"] for t in httpx.get(f"{service.url}/api/v1/users/{nurse}/tokens", headers=admin).json()
    ] == [ids[1]]
    assert (
        httpx.delete(f"{service.url}/api/v1/users/{nurse}/tokens/{ids[1]}", headers=admin).status_code == 204
    )
    assert httpx.get(f"{service.url}/api/v1/me", headers=second).status_code == 401
    revoked = conn.execute(
        "SELECT detail->>'token_id' FROM audit.audit_log WHERE action = 'revoke_token' AND target = %s "
        "ORDER BY entry_id", (nurse,),
    ).fetchall()  # fmt: skip
    assert revoked == [(str(ids[0]),), (str(ids[1]),)]


def test_an_administrator_cannot_take_a_clinical_accounts_token(
    service: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """Finding 4, an administrator escaping "sees no patients": asking the API for a token of a
    nurse's account (to read patients and act under her name) is refused; the nurse makes her own
    over /me/tokens, and an administrator's own kind of account may still be given one."""
    nurse, admin, other_admin = staff(conn, Role.NURSE), staff(conn, Role.ADMIN), staff(conn, Role.ADMIN)
    by_admin = bearer(conn, admin)
    taken = httpx.post(f"{service.url}/api/v1/users/{nurse}/tokens", headers=by_admin)
    assert taken.status_code == 403, taken.text
    assert "token" not in taken.json()
    assert conn.execute(
        "SELECT count(*) FROM sessions WHERE username = %s AND kind = 'api'", (nurse,)
    ).fetchone() == (0,)
    conn.rollback()
    own = httpx.post(f"{service.url}/api/v1/me/tokens", headers=bearer(conn, nurse), json={"days": 7})
    assert own.status_code == 200, own.text
    me = httpx.get(f"{service.url}/api/v1/me", headers={"Authorization": f"Bearer {own.json()['token']}"})
    assert me.json()["username"] == nurse
    given = httpx.post(f"{service.url}/api/v1/users/{other_admin}/tokens", headers=by_admin)
    assert given.status_code == 200, given.text


def test_an_open_event_stream_ends_with_its_session(
    service: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """Finding 4, insider whose account ends: the live event stream a nurse had open before an
    administrator deactivated her stops within seconds, instead of telling her for ever when the
    centre's queue changes."""
    nurse, admin = staff(conn, Role.NURSE), staff(conn, Role.ADMIN)
    token = bearer(conn, nurse)
    ended = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", f"{service.url}/events", headers=token, timeout=60) as stream:
            assert stream.status_code == 200
            for _ in stream.iter_lines():
                pass
        ended.set()

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert not ended.wait(3), "the stream should stay open while the session lives"
    done = httpx.post(f"{service.url}/api/v1/users/{nurse}/deactivate", headers=bearer(conn, admin))
    assert done.status_code == 200, done.text
    assert ended.wait(20), "the event stream is still open after the account was deactivated"
    assert httpx.get(f"{service.url}/events", headers=token).status_code == 401


def test_bearer_tokens_last_at_most_90_days(
    service: AlertsProcess, conn: psycopg.Connection[Any], stack: Stack
) -> None:
    """Finding 4, a leaked token: no way of making one (command line, API, the library) gives it more
    than 90 days, and the default is 90."""
    user = staff(conn, Role.NURSE)
    refused = _admin(["token", user, "--days", "365"], stack)
    assert refused.returncode == 1
    assert "between 1 and 90 days" in refused.stderr
    made = _admin(["token", user], stack)
    assert made.returncode == 0, made.stderr
    expires = conn.execute(
        "SELECT max(expires_at) FROM sessions WHERE username = %s AND kind = 'api'", (user,)
    ).fetchone()
    conn.rollback()
    assert expires is not None
    assert expires[0] <= datetime.now(UTC) + timedelta(days=90)
    assert (
        httpx.get(
            f"{service.url}/api/v1/me", headers={"Authorization": f"Bearer {made.stdout.strip()}"}
        ).status_code
        == 200
    )
    admin, integration = bearer(conn, staff(conn, Role.ADMIN)), staff(conn, Role.ADMIN)
    assert (
        httpx.post(
            f"{service.url}/api/v1/users/{integration}/tokens", headers=admin, json={"days": 91}
        ).status_code
        == 422
    )
    assert httpx.post(f"{service.url}/api/v1/me/tokens", headers=admin, json={"days": 91}).status_code == 422
    given = httpx.post(f"{service.url}/api/v1/users/{integration}/tokens", headers=admin)
    assert given.status_code == 200
    assert datetime.fromisoformat(given.json()["expires_at"]) <= datetime.now(UTC) + timedelta(days=90)
    with pytest.raises(AccountError, match="90 days"):
        new_session(conn, user, kind="api", lifetime=timedelta(days=91), ip=None)


# ------------------------------------------------------------------ the login limiter
def test_concurrent_failed_logins_cannot_exceed_the_limit(
    service: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """Finding 4, password guessing in parallel: 24 wrong logins fired at once get exactly 5 password
    checks (401); the rest are refused by the limiter (429), and then so is the right password.
    (Sent through the trusted proxy from an address of this test's own, so that the limit per
    address, shared by every test on 127.0.0.1, is not what answers.)"""
    nurse = staff(conn, Role.NURSE)
    start = threading.Barrier(24)
    codes: list[int] = []
    address = {"X-Forwarded-For": f"198.18.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"}

    def guess(n: int) -> None:
        with _client(via_proxy=True, headers=address) as client:
            start.wait()
            codes.append(
                client.post(
                    f"{service.url}/login", data={"username": nurse, "password": f"guess {n}"}
                ).status_code
            )

    threads = [threading.Thread(target=guess, args=(n,)) for n in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert sorted(codes) == [401] * 5 + [429] * 19
    assert len(_failure_ips(conn, nurse)) == 5
    with _client(via_proxy=True, headers=address) as client:
        assert (
            client.post(f"{service.url}/login", data={"username": nurse, "password": PASSWORD}).status_code
            == 429
        )


def test_the_limit_per_address_counts_an_ipv6_clients_whole_64(
    service: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """Finding 4, password spraying from IPv6: a client that takes a fresh address of its /64 for
    each guess (one guess each at many accounts) is still stopped after 30 failures, as one address
    would be; a neighbouring /64 is not."""
    site, subnet = secrets.randbelow(0xFFFF), secrets.randbelow(0xFFFF)
    prefix = f"2001:db8:{site:x}:{subnet:x}"
    sprayed = f"spray-{secrets.token_hex(4)}"
    codes = []
    for n in range(31):
        with _client(via_proxy=True, headers={"X-Forwarded-For": f"{prefix}::{n + 1:x}"}) as client:
            codes.append(
                client.post(
                    f"{service.url}/login", data={"username": f"{sprayed}-{n}", "password": "Password123!"}
                ).status_code
            )
    assert codes == [401] * 30 + [429]
    with _client(
        via_proxy=True, headers={"X-Forwarded-For": f"2001:db8:{site:x}:{subnet + 1:x}::1"}
    ) as neighbour:
        assert (
            neighbour.post(
                f"{service.url}/login", data={"username": f"{sprayed}-0", "password": "Password123!"}
            ).status_code
            == 401
        )
