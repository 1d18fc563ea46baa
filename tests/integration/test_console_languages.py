"""The patient-level queue and the console's languages on the running service (issue #32, items 5
and 6): one row per patient with all their open problems, most urgent first, within the user's
team; the alert page's links to the patient's other problems; each user's language kept with their
account, switched with a CSRF-checked form, and hostile language input answered clearly."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from alerts.accounts import Role
from alerts.store import apply_events
from alerts.workers.notify import Note, deliver_due
from contracts import EpisodeChange, Severity
from tests.conftest import Stack
from tests.integration.alerts_support import (
    AlertsProcess,
    ConsoleClient,
    add_patient,
    event,
    new_id,
    publish,
    set_aside_leftovers,
    staff,
    wait_for,
)
from tests.integration.registry_support import new_team


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url) as connection:
        yield connection


@pytest.fixture
def service(alerts: AlertsProcess) -> AlertsProcess:
    alerts.extra_env["VAKTROM_ALERTS_COOKIE_SECURE"] = "false"  # the test client speaks plain http
    alerts.language = "nb"  # the centre's default: bokmål, as in production
    alerts.start()
    return alerts


class Ward:
    """Team A: patient `a` with a red, a yellow and an info problem, patient `b` with a yellow one;
    team B: patient `c` with a red one."""

    def __init__(self, conn: psycopg.Connection[Any], stack: Stack, service: AlertsProcess) -> None:
        tag = uuid.uuid4().hex[:8]
        self.team_a = new_team(conn, f"ward-a-{tag}")
        self.team_b = new_team(conn, f"ward-b-{tag}")
        self.a, self.b, self.c = f"P-a{tag}", f"P-b{tag}", f"P-c{tag}"
        add_patient(conn, stack, self.a, self.team_a, name="Kari Nordmann")
        add_patient(conn, stack, self.b, self.team_a)
        add_patient(conn, stack, self.c, self.team_b, name="Ola Hemmelig")
        conn.commit()
        self.a_red, self.a_yellow, self.a_info, self.b_yellow, self.c_red = (new_id() for _ in range(5))
        publish(
            stack, service.prefix,
            event(self.a_info, 1, EpisodeChange.OPENED, Severity.INFO, patient_id=self.a,
                  rule_id="kit-silent",
                  explanation="No message from the kit since 1 Nov 09:00 CET (13 h); rule kit-silent: no "
                  "message from the kit for longer than expected"),
            event(self.b_yellow, 1, EpisodeChange.OPENED, Severity.YELLOW, patient_id=self.b),
            event(self.a_yellow, 1, EpisodeChange.OPENED, Severity.YELLOW, patient_id=self.a,
                  rule_id="HF-1", metric="body_weight",
                  explanation="Weight 82.3 kg, +2.3 kg since 19 Nov (3 days); rule HF-1: > 2 kg in 3 days"),
            event(self.a_red, 1, EpisodeChange.OPENED, Severity.RED, patient_id=self.a),
            event(self.c_red, 1, EpisodeChange.OPENED, Severity.RED, patient_id=self.c),
        )  # fmt: skip
        episodes = (self.a_red, self.a_yellow, self.a_info, self.b_yellow, self.c_red)
        wait_for(lambda: _stored(conn, episodes) == 5, "the five alerts stored")
        self.nurse_a = staff(conn, Role.NURSE, team=self.team_a)
        self.nurse_b = staff(conn, Role.NURSE, team=self.team_b)


def _stored(conn: psycopg.Connection[Any], episodes: tuple[str, ...]) -> int:
    row = conn.execute("SELECT count(*) FROM alerts WHERE episode_id = ANY(%s)", (list(episodes),)).fetchone()
    conn.rollback()
    return int(row[0]) if row else 0


@pytest.fixture
def ward(conn: psycopg.Connection[Any], stack: Stack, service: AlertsProcess) -> Ward:
    return Ward(conn, stack, service)


@pytest.fixture
def client(service: AlertsProcess) -> Iterator[ConsoleClient]:
    made = ConsoleClient(service.url)
    yield made
    made.close()


def _rows(html: str) -> list[str]:
    """The queue's rows, each as its HTML."""
    return re.findall(r'<tr class="sev-[^"]*"[^>]*data-id="[^"]*".*?</tr>', html, flags=re.S)


def test_one_row_per_patient_with_every_open_problem_most_urgent_first(
    ward: Ward, client: ConsoleClient
) -> None:
    """Patient a's three problems share one row, led by the red one and in urgency order; patient b
    follows; team B's patient is nowhere. The per-problem view still lists each problem."""
    client.login(ward.nurse_a)
    page = client.get("/", headers={"Accept-Language": "en"})
    assert page.status_code == 200
    for html in (page.text, client.get("/queue/rows").text):
        rows = _rows(html)
        mine = [r for r in rows if ward.a in r or ward.b in r]
        assert [ward.a in r for r in mine] == [True, False], "patient a (red) first, then b, one row each"
        row_a = mine[0]
        assert f'data-href="/alerts/{ward.a_red}"' in row_a
        at = [row_a.index(f'data-episode="{e}"') for e in (ward.a_red, ward.a_yellow, ward.a_info)]
        assert at == sorted(at), "the patient's problems most urgent first"
        assert "Kari Nordmann" in row_a
        assert ward.c not in html
        assert ward.c_red not in html
        assert "Ola Hemmelig" not in html
    by_problem = client.get("/queue/rows?by=problem").text
    assert sum(ward.a in r for r in _rows(by_problem)) == 3
    assert client.get("/queue/rows?by=nonsense").status_code == 400


def test_the_alert_page_links_the_patient_s_other_open_problems(ward: Ward, client: ConsoleClient) -> None:
    """The yellow problem's page links the red and the info one of the same patient, nothing else."""
    client.login(ward.nurse_a)
    page = client.get(f"/alerts/{ward.a_yellow}").text
    others = page.split('id="other-problems"', 1)[1].split("</section>", 1)[0]
    assert f'href="/alerts/{ward.a_red}"' in others
    assert f'href="/alerts/{ward.a_info}"' in others
    assert ward.a_yellow not in others
    assert ward.b_yellow not in others
    assert ward.c_red not in others


def test_another_team_sees_nothing_of_it_in_any_language(ward: Ward, client: ConsoleClient) -> None:
    """Team B's nurse, in either language, sees only patient c: not team A's row, nor its alert
    pages (404, as for an alert that does not exist)."""
    client.login(ward.nurse_b)
    for language in ("nb", "en"):
        assert (
            client.post("/me/language", data={"language": language, "csrf": client.csrf}).status_code == 303
        )
        html = (
            client.get("/").text + client.get("/queue/rows").text + client.get("/queue/rows?by=problem").text
        )
        assert ward.c in html
        assert ward.a not in html
        assert ward.b not in html
        assert "Kari Nordmann" not in html
        assert client.get(f"/alerts/{ward.a_red}").status_code == 404
        assert ward.a not in client.get(f"/alerts/{ward.c_red}").text


def test_a_user_s_language_is_kept_with_their_account(
    ward: Ward, client: ConsoleClient, service: AlertsProcess, conn: psycopg.Connection[Any]
) -> None:
    """The centre's default is bokmål; a nurse switches to English and back, it is stored with her
    account and audited, and a colleague's console stays as it was. Explanations, dates and the
    keyboard help follow the language; the CSP is the same in both."""
    client.login(ward.nurse_a)
    nb = client.get("/")
    assert '<html lang="nb">' in nb.text
    assert ">Pasient<" in nb.text
    assert "Alvorlighet" in nb.text
    assert "Åpne problemer" in nb.text
    assert "Vekt 82,3 kg, +2,3 kg siden 19. nov. (3 døgn); regel HF-1: &gt; 2 kg på 3 dager" in nb.text
    assert (
        client.post("/me/language", data={"language": "en", "csrf": client.csrf, "next": "/"}).status_code
        == 303
    )
    en = client.get("/", headers={"Accept-Language": "nb"})  # the stored choice beats the browser
    assert '<html lang="en">' in en.text
    assert ">Patient<" in en.text
    assert "Weight 82.3 kg, +2.3 kg since 19 Nov (3 days)" in en.text
    assert en.headers["content-security-policy"] == nb.headers["content-security-policy"]
    row = conn.execute("SELECT language FROM users WHERE username = %s", (ward.nurse_a,)).fetchone()
    assert row == ("en",)
    audited = conn.execute(
        "SELECT detail->>'language' FROM audit.audit_log WHERE actor = %s AND action = 'set_language'",
        (ward.nurse_a,),
    ).fetchall()
    assert audited == [("en",)]
    conn.rollback()
    colleague = ConsoleClient(service.url)
    try:
        colleague.login(staff(conn, Role.NURSE, team=ward.team_a))
        assert '<html lang="nb">' in colleague.get("/").text
    finally:
        colleague.close()
    alert = client.get(f"/alerts/{ward.a_yellow}")
    assert "Claim" in alert.text
    assert client.post("/me/language", data={"language": "nb", "csrf": client.csrf}).status_code == 303
    alert = client.get(f"/alerts/{ward.a_yellow}")
    assert "Ta ansvar" in alert.text
    assert "Pasientens andre åpne problemer" in alert.text


@pytest.mark.parametrize(
    "value", ["de", "NB", "nb\x00", "../../etc/passwd", "<script>alert(1)</script>", "x" * 17, "nb;en"]
)
def test_a_hostile_language_value_gets_a_clear_answer(ward: Ward, client: ConsoleClient, value: str) -> None:
    """A language that is not nb or en is refused with 400 and a sentence naming the choices, the
    value never echoed; the account keeps its language."""
    client.login(ward.nurse_a)
    response = client.post("/me/language", data={"language": value, "csrf": client.csrf})
    assert response.status_code in (400, 422)
    assert "<script>" not in response.text
    if response.status_code == 400:
        assert "nb, en" in response.text
    assert '<html lang="nb">' in client.get("/").text


def test_the_switch_needs_the_session_s_csrf_token_and_a_login(ward: Ward, client: ConsoleClient) -> None:
    """Another site cannot switch a nurse's language: no token, a wrong token or a foreign Origin
    is 403; nobody logged in is sent to the login page. An open redirect in `next` goes home."""
    assert client.post("/me/language", data={"language": "en"}).status_code in (303, 401)
    client.login(ward.nurse_a)
    assert client.post("/me/language", data={"language": "en"}).status_code == 403
    assert client.post("/me/language", data={"language": "en", "csrf": "forged"}).status_code == 403
    foreign = {"Origin": "https://evil.example"}
    assert (
        client.post("/me/language", data={"language": "en", "csrf": client.csrf}, headers=foreign).status_code
        == 403
    )
    away = client.post(
        "/me/language", data={"language": "en", "csrf": client.csrf, "next": "//evil.example/"}
    )
    assert away.headers["location"] == "/"


@pytest.mark.parametrize(
    "header",
    [
        "en;q=abc",
        "x" * 5000,
        "\u00e6\u00f8\u00e5, *;q=0.1",
        "en;q=NaN,nb;q=inf",
        ",,,;;;",
        "en-US" + ",en" * 300,
    ],
)
def test_hostile_accept_language_headers_get_a_page(service: AlertsProcess, header: str) -> None:
    """The login page answers any Accept-Language with 200 in a language it has, never a 500."""
    response = httpx.get(f"{service.url}/login", headers={"Accept-Language": header.encode()})
    assert response.status_code == 200
    assert re.search(r'<html lang="(nb|en)">', response.text)


def test_the_login_page_follows_the_browser_then_the_default(service: AlertsProcess) -> None:
    """Nobody is logged in on the login page: the browser's language, else the centre's (nb)."""
    assert "Logg inn" in httpx.get(f"{service.url}/login").text
    assert "Log in" in httpx.get(f"{service.url}/login", headers={"Accept-Language": "en-GB"}).text
    assert "Logg inn" in httpx.get(f"{service.url}/login", headers={"Accept-Language": "nn, en;q=0.5"}).text


@dataclass
class Recorder:
    """An e-mail channel that keeps what it would send."""

    kind: str = "email"
    sent: list[tuple[str, Note]] = field(default_factory=list)

    def send(self, target: str, note: Note) -> None:
        self.sent.append((target, note))


def test_a_notification_speaks_its_recipient_s_language(conn: psycopg.Connection[Any]) -> None:
    """An escalation e-mail to a nurse who chose bokmål is in bokmål; one to an address no account
    has (a team mailbox) is in the centre's language; no patient details in either."""
    set_aside_leftovers(conn, alerts=False)
    eid, now = new_id(), datetime.now(UTC)
    apply_events(conn, [event(eid, 1, EpisodeChange.OPENED, Severity.RED)])
    conn.execute(
        "UPDATE alerts SET received_at = %s WHERE episode_id = %s", (now - timedelta(minutes=7), eid)
    )
    nurse = staff(conn, Role.NURSE)
    address = f"{nurse}@centre.example.org"
    conn.execute("UPDATE users SET email = %s, language = 'nb' WHERE username = %s", (address.upper(), nurse))
    for target in (address, "team-mailbox@centre.example.org"):
        conn.execute(
            "INSERT INTO notifications (episode_id, alarm_round, step, channel, target, created_at, "
            "next_attempt_at) VALUES (%s, 1, 3, 'email', %s, %s, %s)",
            (eid, target, now, now),
        )
    conn.commit()
    outbox = Recorder()
    assert deliver_due(conn, {"email": outbox}, now=now, link_base="https://c.example", language="en") == (
        2,
        0,
    )
    notes = dict(outbox.sent)
    assert notes[address].language == "nb"
    assert notes[address].subject().startswith("[Vaktrom] RØD: varsel uten ansvarlig i 7 min")
    assert "vakthavende lege" in notes[address].text()
    assert notes["team-mailbox@centre.example.org"].language == "en"
    assert "RED alert unclaimed for 7 min" in notes["team-mailbox@centre.example.org"].subject()
    for note in notes.values():
        assert "SpO2" not in note.text()
