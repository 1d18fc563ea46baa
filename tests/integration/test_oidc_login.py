"""Single sign-on against a real OpenID provider (Keycloak, tests/support/keycloak.py): the
authorisation code flow with PKCE driven over HTTP as a browser would, from the console's button
through Keycloak's login form and back; roles and team from the claims, no access without a role,
logout at both ends, a tampered state and a replayed code refused, local login kept."""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from alerts import accounts
from alerts.accounts import AccountError, Role
from contracts import EpisodeChange, Severity
from tests.conftest import Stack
from tests.integration.alerts_support import (
    AlertsProcess,
    ConsoleClient,
    add_patient,
    bearer,
    event,
    new_id,
    publish,
    staff,
    wait_for,
)
from tests.integration.registry_support import new_team
from tests.support.keycloak import PASSWORD, Keycloak

TEAM_A, TEAM_B = "sso-team-a", "sso-team-b"  # the teams the realm's users carry (infra/keycloak)


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url) as connection:
        new_team(connection, TEAM_A)
        new_team(connection, TEAM_B)
        connection.commit()
        yield connection


@pytest.fixture
def service(alerts: AlertsProcess, keycloak: Keycloak, conn: psycopg.Connection[Any]) -> AlertsProcess:
    alerts.extra_env.update(keycloak.console_env())
    alerts.extra_env["VAKTROM_ALERTS_COOKIE_SECURE"] = "false"  # the test client speaks plain http
    alerts.start()
    return alerts


class Browser:
    """One browser: cookies for both sites, redirects followed by hand so each step is seen.

    Keycloak marks its cookies Secure (SameSite=None needs it), which a browser keeps on
    http://127.0.0.1 but Python's cookie jar does not send over plain http: they are kept here."""

    def __init__(self, console: str, keycloak: Keycloak) -> None:
        self.console, self.provider_port = console, keycloak.port
        self.http = httpx.Client(timeout=30, follow_redirects=False)
        self.provider_cookies: dict[str, str] = {}

    def send(self, method: str, url: str, **kw: Any) -> httpx.Response:
        to_provider = urlsplit(url).port == self.provider_port
        headers = dict(kw.pop("headers", None) or {})
        if to_provider and self.provider_cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.provider_cookies.items())
        answer = self.http.request(method, url, headers=headers, **kw)
        for raw in answer.headers.get_list("set-cookie") if to_provider else []:
            name, _, rest = raw.partition("=")
            value = rest.split(";")[0]
            if value and "max-age=0" not in raw.lower():
                self.provider_cookies[name.strip()] = value
            else:
                self.provider_cookies.pop(name.strip(), None)
        return answer

    def to_provider_login(self) -> httpx.Response:
        """From the console's single-sign-on button to Keycloak's login form."""
        answer = self.send("GET", f"{self.console}/login/oidc")
        assert answer.status_code == 302, answer.text
        assert "code_challenge=" in answer.headers["location"]
        assert "code_challenge_method=S256" in answer.headers["location"]
        while answer.status_code in (302, 303):
            answer = self.send("GET", answer.headers["location"])
        assert answer.status_code == 200, answer.text
        return answer

    def submit_login(self, form: httpx.Response, username: str) -> str:
        """Fill in Keycloak's login form; returns the callback address it sends the browser to."""
        action = re.search(r'action="([^"]*login-actions/authenticate[^"]*)"', form.text)
        assert action is not None, form.text[:2000]
        answer = self.send(
            "POST", html.unescape(action.group(1)),
            data={"username": username, "password": PASSWORD, "credentialId": ""},
        )  # fmt: skip
        assert answer.status_code == 302, answer.text[:2000]
        location = answer.headers["location"]
        assert location.startswith(f"{self.console}/login/oidc/callback"), location
        return location

    def login(self, username: str) -> httpx.Response:
        """The whole flow; returns the console's answer to the callback."""
        return self.send("GET", self.submit_login(self.to_provider_login(), username))

    @property
    def session(self) -> str | None:
        return self.http.cookies.get("vaktrom_session")

    def page(self, path: str) -> httpx.Response:
        return self.http.get(f"{self.console}{path}")

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def browser(service: AlertsProcess, keycloak: Keycloak) -> Iterator[Any]:
    made: list[Browser] = []

    def make() -> Browser:
        made.append(Browser(service.url, keycloak))
        return made[-1]

    yield make
    for b in made:
        b.close()


def _alert_of(conn: psycopg.Connection[Any], stack: Stack, service: AlertsProcess, team: str) -> str:
    """An open alert of a fresh patient of `team`, in the store."""
    patient, episode = f"P-{uuid.uuid4().hex[:10]}", new_id()
    add_patient(conn, stack, patient, team, name="Test Pasient")
    conn.commit()
    publish(stack, service.prefix, event(episode, 1, EpisodeChange.OPENED, Severity.RED, patient_id=patient))
    auth = bearer(conn, staff(conn, Role.COORDINATOR))
    conn.commit()
    url = f"{service.url}/api/v1/alerts/{episode}"
    wait_for(lambda: httpx.get(url, headers=auth).status_code == 200, "the alert in the store")
    return episode


def _username(
    conn: psycopg.Connection[Any], keycloak: Keycloak, session_of: str
) -> tuple[str, str, str | None]:
    row = conn.execute(
        "SELECT u.username, u.role, u.team_id FROM sessions s JOIN users u USING (username) "
        "JOIN oidc_identities i USING (username) WHERE i.issuer = %s ORDER BY s.created_at DESC LIMIT 1",
        (keycloak.issuer,),
    ).fetchone()
    conn.rollback()
    assert row is not None, f"no single-sign-on session for {session_of}"
    return row[0], row[1], row[2]


def test_a_nurse_of_team_a_logs_in_to_her_teams_queue_and_cannot_reach_team_b(
    stack: Stack, service: AlertsProcess, conn: psycopg.Connection[Any], browser: Any, keycloak: Keycloak
) -> None:
    """Keycloak's nurse of team A lands in the console with a session of role nurse and team A (from
    the claims): team A's alert is in her queue and opens; team B's is not there and answers 404."""
    mine, theirs = _alert_of(conn, stack, service, TEAM_A), _alert_of(conn, stack, service, TEAM_B)
    nurse = browser()
    answer = nurse.login("nurse-a")
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/"
    assert nurse.session
    assert "HttpOnly" in answer.headers["set-cookie"]
    assert "SameSite=strict" in answer.headers["set-cookie"]
    username, role, team = _username(conn, keycloak, "nurse-a")
    assert (role, team) == ("nurse", TEAM_A)
    queue = nurse.page("/?view=all")
    assert queue.status_code == 200
    assert mine in queue.text
    assert theirs not in queue.text
    assert nurse.page(f"/alerts/{mine}").status_code == 200
    assert nurse.page(f"/alerts/{theirs}").status_code == 404
    # The account has no password: the local form does not let anyone in under its name.
    local = ConsoleClient(service.url)
    try:
        assert local.login(username, "").status_code in (401, 422)
        assert local.login(username, "x" * 20).status_code == 401
    finally:
        local.close()
    # Nor an API token, which would outlive her removal at the provider (the call behind
    # POST /api/v1/me/tokens and the operator's `token` command).
    with pytest.raises(AccountError, match="gets no API token"):
        accounts.new_session(conn, username, kind="api", lifetime=timedelta(days=1), ip=None)
    assert conn.execute("SELECT count(*) FROM sessions WHERE username = %s AND kind = 'api'",
                        (username,)).fetchone() == (0,)  # fmt: skip
    conn.rollback()


def test_a_user_without_a_role_gets_the_no_access_page_and_no_session(
    service: AlertsProcess, browser: Any, conn: psycopg.Connection[Any]
) -> None:
    """A person the provider knows but who has no Vaktrom role there: a 403 page that says so, no
    session cookie, and the console still asks for a login."""
    someone = browser()
    answer = someone.login("norole")
    assert answer.status_code == 403
    assert "No access to Vaktrom" in answer.text
    assert "no role in Vaktrom" in answer.text
    assert "vaktrom_session" not in answer.headers.get("set-cookie", "")
    assert someone.session is None
    assert someone.page("/").status_code == 303
    norwegian = browser()
    norwegian.http.headers["Accept-Language"] = "nb"
    answer = norwegian.login("norole")
    assert answer.status_code == 403
    assert "Ingen tilgang til Vaktrom" in answer.text
    assert "ingen rolle i Vaktrom" in answer.text
    refused = conn.execute(
        "SELECT count(*) FROM audit.audit_log WHERE action = 'login_refused' AND target = 'norole'"
    ).fetchone()
    assert refused is not None
    assert refused[0] >= 1


def test_a_manager_without_a_team_is_a_centre_wide_coordinator(
    service: AlertsProcess, browser: Any, conn: psycopg.Connection[Any], keycloak: Keycloak
) -> None:
    """The manager's provider role maps to coordinator, a centre role here, so no team claim means
    every team."""
    manager = browser()
    assert manager.login("manager").status_code == 303
    _, role, team = _username(conn, keycloak, "manager")
    assert (role, team) == ("coordinator", None)


def test_logout_ends_the_session_here_and_at_the_provider(
    service: AlertsProcess, browser: Any, keycloak: Keycloak
) -> None:
    """Logout: the old cookie no longer works, the browser goes to the provider's end-session endpoint
    with the ID token as hint and comes back to the login page; the next login asks for the password
    again (the provider's session ended too)."""
    nurse = browser()
    assert nurse.login("nurse-a").status_code == 303
    old = nurse.session
    csrf = re.search(r'name="csrf" value="([^"]+)"', nurse.page("/").text)
    assert csrf is not None
    out = nurse.http.post(
        f"{service.url}/logout", data={"csrf": csrf.group(1)}, headers={"Origin": service.url}
    )
    assert out.status_code == 303, out.text
    location = out.headers["location"]
    assert location.startswith(f"{keycloak.issuer}/protocol/openid-connect/logout?"), location
    query = parse_qs(urlsplit(location).query)
    assert query["id_token_hint"]
    assert query["post_logout_redirect_uri"] == [f"{service.url}/login"]
    stale = httpx.get(f"{service.url}/", cookies={"vaktrom_session": old or ""})
    assert stale.status_code == 303
    assert stale.headers["location"].startswith("/login")
    back = nurse.send("GET", location)
    assert back.status_code == 302, back.text[:1000]
    assert back.headers["location"].startswith(f"{service.url}/login")
    assert 'id="kc-form-login"' in nurse.to_provider_login().text


def _tamper(url: str, state: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | {"state": state}
    return urlunsplit(parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())))


def test_a_tampered_state_is_refused(service: AlertsProcess, browser: Any) -> None:
    """A callback whose state is not the one this browser was sent with: refused, no session."""
    someone = browser()
    callback = someone.submit_login(someone.to_provider_login(), "nurse-a")
    answer = someone.http.get(_tamper(callback, "forged-" + uuid.uuid4().hex))
    assert answer.status_code == 400
    assert "start it again" in answer.text
    assert someone.session is None


def test_a_replayed_code_is_refused(service: AlertsProcess, browser: Any) -> None:
    """The callback used once logs in; played again, in the same browser or with the login-state
    cookie copied from before, it starts no second session (the state is spent, the code too)."""
    first = browser()
    callback = first.submit_login(first.to_provider_login(), "nurse-a")
    state_cookie = first.http.cookies.get("vaktrom_oidc")
    assert state_cookie
    assert first.http.get(callback).status_code == 303
    assert first.http.get(callback).status_code == 400  # its state is gone from this browser
    thief = browser()
    thief.http.cookies.set("vaktrom_oidc", state_cookie, domain="127.0.0.1", path="/login/oidc")
    replay = thief.http.get(callback)
    assert replay.status_code == 400, replay.text[:1000]  # the provider refuses a code used before
    assert thief.session is None


def test_local_login_still_works_beside_single_sign_on(
    service: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """A local account logs in with its password as before; the login page offers both."""
    nurse = staff(conn, Role.NURSE, TEAM_A)
    client = ConsoleClient(service.url)
    try:
        page = client.get("/login")
        assert "Log in with Test Hospital" in page.text
        assert client.login(nurse).status_code == 303
        assert client.get("/").status_code == 200
    finally:
        client.close()


def _set_user(keycloak: Keycloak, username: str, *, role: str | None, team: str) -> None:
    """Give a realm user one realm role (or none of ours) and a team, through the admin API."""
    with keycloak.admin() as admin:
        found = admin.get("/users", params={"username": username, "exact": "true"}).json()
        user = found[0]
        user_id = user["id"]
        user["attributes"] = {**(user.get("attributes") or {}), "team": [team]}
        admin.put(f"/users/{user_id}", json=user).raise_for_status()
        ours = {"sykepleier", "koordinator", "lege", "systemansvarlig"}
        held = [r for r in admin.get(f"/users/{user_id}/role-mappings/realm").json() if r["name"] in ours]
        if held:
            admin.request("DELETE", f"/users/{user_id}/role-mappings/realm", json=held).raise_for_status()
        if role is not None:
            wanted = admin.get(f"/roles/{role}").json()
            admin.post(f"/users/{user_id}/role-mappings/realm", json=[wanted]).raise_for_status()


def test_a_change_at_the_provider_takes_effect_at_the_next_login(
    service: AlertsProcess, browser: Any, conn: psycopg.Connection[Any], keycloak: Keycloak
) -> None:
    """Nurse B moved to team A at the provider: the next login is team A's, and the session from
    before the move ends. Her role removed: the next login is refused and her open session ends. The
    same account (issuer + subject) all along."""
    first = browser()
    try:
        assert first.login("nurse-b").status_code == 303
        username, role, team = _username(conn, keycloak, "nurse-b")
        assert (role, team) == ("nurse", TEAM_B)
        _set_user(keycloak, "nurse-b", role="sykepleier", team=TEAM_A)
        moved = browser()
        assert moved.login("nurse-b").status_code == 303
        assert _username(conn, keycloak, "nurse-b") == (username, "nurse", TEAM_A)
        assert first.page("/").status_code == 303  # the session from before the move is over
        assert moved.page("/").status_code == 200
        _set_user(keycloak, "nurse-b", role=None, team=TEAM_A)
        refused = browser().login("nurse-b")
        assert refused.status_code == 403
        assert "no role in Vaktrom" in refused.text
        assert moved.page("/").status_code == 303  # access removed at the provider ends here too
    finally:
        _set_user(keycloak, "nurse-b", role="sykepleier", team=TEAM_B)
