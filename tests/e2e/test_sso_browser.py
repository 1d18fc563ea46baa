# ruff: noqa: F811  (the EHR endpoint's key_file fixture is imported from test_ehr_outbox)
"""Single sign-on in a real browser (Playwright driving Debian's Chromium): a nurse logs in through
the hospital's OpenID provider (a real Keycloak, tests/support/keycloak.py), resolves an alert of her
team, the record document of that resolution arrives signed at the EHR's receiving endpoint (a
stdlib HTTP server standing in for it), and she logs out at both ends. The console's content
security policy is on throughout, so the logout's redirect to the provider is also a check of its
`form-action`. Issue #33's acceptance test."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from alerts.ehr import verify
from contracts import EpisodeChange, Severity
from tests.conftest import Stack
from tests.integration.alerts_support import AlertsProcess, add_patient, event, new_id, publish
from tests.integration.stage_support import prepare
from tests.integration.test_ehr_outbox import Ehr, ehr_endpoint, key_file, public_pem  # noqa: F401 (fixture)
from tests.support.keycloak import PASSWORD, Keycloak

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip
TEAM_A = "sso-team-a"  # nurse-a's team in the test realm (infra/keycloak/realm-vaktrom.json)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: run infra/bootstrap (it installs Debian's chromium package)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def ehr() -> Iterator[Ehr]:
    with ehr_endpoint() as endpoint:
        yield endpoint


@pytest.fixture
def service(  # noqa: PLR0917 (fixtures)
    stack: Stack, unique: str, artefacts: Path, keycloak: Keycloak, ehr: Ehr, key_file: Path
) -> Iterator[AlertsProcess]:
    prepare(stack, unique)
    # Secure cookies stay on: Chromium accepts them on http://127.0.0.1, as on any https site.
    process = AlertsProcess(stack, unique, artefacts)
    process.extra_env.update(keycloak.console_env())
    process.extra_env.update({
        "VAKTROM_ALERTS_EHR_URL": ehr.url, "VAKTROM_ALERTS_EHR_SIGNING_KEY": str(key_file),
        "VAKTROM_ALERTS_EHR_EVERY_S": "0.2", "VAKTROM_ALERTS_EHR_TIMEOUT_S": "2",
    })  # fmt: skip
    process.start()
    yield process
    process.stop()


def _document_about(ehr: Ehr, eid: str, key_file: Path, timeout_s: float = 30) -> dict[str, object]:
    """The signed record document of alert `eid` the endpoint received (others' may come too)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for headers, body in list(ehr.received):
            doc = json.loads(body)
            issues = [
                e["resource"]
                for e in doc.get("entry", [])
                if e["resource"]["resourceType"] == "DetectedIssue"
            ]
            if issues and issues[0]["identifier"][0]["value"] == eid:
                assert verify(public_pem(key_file), body, headers["x-vaktrom-signature"]), "signature"
                return dict(doc)
        time.sleep(0.2)
    raise AssertionError(f"no record document about {eid} reached the EHR in {timeout_s:g} s")


def test_a_nurse_logs_in_through_the_provider_resolves_an_alert_its_record_arrives_and_she_logs_out(  # noqa: PLR0917
    stack: Stack,
    service: AlertsProcess,
    browser: Browser,
    keycloak: Keycloak,
    artefacts: Path,
    ehr: Ehr,
    key_file: Path,
) -> None:
    """The whole day in the browser: the login page's single-sign-on button, Keycloak's form, her
    team's queue, claim and resolve, the record document at the EHR (signed, written by her, with
    her note), and logout through the provider back to the login page."""
    now = datetime.now(UTC).replace(microsecond=0)
    patient = f"P-{new_id()[:10]}"
    with psycopg.connect(stack.database_url) as conn:
        conn.execute(
            "INSERT INTO teams (team_id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING", (TEAM_A, TEAM_A)
        )
        add_patient(conn, stack, patient, TEAM_A, "Solveig Lien")
        conn.commit()
    eid = new_id()
    publish(stack, service.prefix, event(
        eid, 1, EpisodeChange.OPENED, Severity.RED, patient_id=patient, opened_at=now - timedelta(minutes=20),
        last_seen_at=now - timedelta(minutes=20), emitted_at=now,
    ))  # fmt: skip

    page: Page = browser.new_page(viewport={"width": 1440, "height": 900})
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
    page.on("dialog", lambda d: d.dismiss())
    page.goto(f"{service.url}/")
    page.click("text=Log in with Test Hospital")
    expect(page.locator("#username")).to_be_visible(timeout=15000)
    assert page.url.startswith(keycloak.issuer)
    page.fill("#username", "nurse-a")
    page.fill("#password", PASSWORD)
    page.click("#kc-login")
    expect(page.locator("header .who strong")).to_have_text("Nora Aasen", timeout=15000)
    assert page.url.startswith(service.url)
    row = page.locator(f'tr[data-id="{eid}"]')
    expect(row).to_be_visible(timeout=30000)
    expect(row).to_contain_text("Solveig Lien")
    page.screenshot(path=str(artefacts / "sso-queue.png"), full_page=True)

    page.goto(f"{service.url}/alerts/{eid}")
    page.keyboard.press("c")
    expect(page.locator("#panel h2 .state")).to_have_text("claimed")
    page.keyboard.press("r")
    page.select_option("#resolve select[name=resolution]", "contacted_no_action")
    page.fill("#resolve textarea[name=note]", "Called her; re-measured 95 %.")
    page.click("#resolve button.primary")
    expect(page.locator("#panel h2 .state")).to_have_text("resolved")
    expect(page.locator(".timeline")).to_contain_text("Nora Aasen resolved it")
    document = _document_about(ehr, eid, key_file)
    assert document["type"] == "document"
    entries = [e["resource"] for e in document["entry"]]  # type: ignore[attr-defined]
    assert entries[0]["resourceType"] == "Composition"
    assert "Called her; re-measured 95 %." in json.dumps(entries[0])
    assert any(r["resourceType"] == "Practitioner" and "Nora Aasen" in json.dumps(r) for r in entries)
    assert patient in json.dumps(entries)
    assert "Solveig Lien" not in json.dumps(entries)  # the pseudonym only, never the name
    page.goto(f"{service.url}/record-outbox")  # the team's Record page lists it as delivered
    listed = page.locator("tr", has=page.locator(f'a[href="/alerts/{eid}"]'))
    expect(listed).to_have_class("record-delivered", timeout=15000)

    page.click("header form[action='/logout'] button")
    expect(page).to_have_url(re.compile(re.escape(f"{service.url}/login") + r"(\?state=.*)?$"), timeout=15000)
    page.goto(f"{service.url}/")
    expect(page).to_have_url(f"{service.url}/login?next=%2F")
    page.click("text=Log in with Test Hospital")
    expect(page.locator("#username")).to_be_visible(timeout=15000)  # the provider asks again
    page.close()
    assert not [v for v in violations if "form-action" in v], violations
