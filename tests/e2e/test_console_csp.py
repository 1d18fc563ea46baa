"""Every console page under the Content-Security-Policy, in a real browser (issue #28, finding 4).

The policy allows no inline script, no inline event handler and no style attribute; a template that
still had one would silently lose that behaviour in the browser (a filter that no longer submits,
a trend chart that never draws). Chromium reports each blocked thing as a `securitypolicyviolation`
event and a console error; this test visits every page as a coordinator and as an administrator,
uses the behaviour that moved out of the templates, and fails on any report.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect

from alerts.accounts import Role
from alerts.store import apply_events
from contracts import EpisodeChange, Evidence, Severity, Threshold
from tests.conftest import Stack
from tests.e2e.test_console_browser import browser, readings  # noqa: F401  (the module's browser fixture)
from tests.integration.alerts_support import PASSWORD, AlertsProcess, add_patient, event, new_id, staff
from tests.integration.stage_support import prepare

# Runs before any page script, outside the page's CSP (Playwright injects it), and keeps every report.
_WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation", (e) => {
  const where = e.sourceFile + ":" + e.lineNumber;
  window.__csp.push(e.violatedDirective + " blocked " + (e.blockedURI || "inline") + " at " + where);
});
"""


@pytest.fixture
def service(stack: Stack, unique: str, artefacts: Path) -> Iterator[AlertsProcess]:
    prepare(stack, unique)
    process = AlertsProcess(stack, unique, artefacts)
    process.start()
    yield process
    process.stop()


class Watched:
    """A page whose CSP reports and console errors are collected, checked after each visit."""

    def __init__(self, chromium: Browser, base: str, *, confirm: bool = False) -> None:
        self.base = base
        self.page: Page = chromium.new_page(viewport={"width": 1280, "height": 900})
        self.page.add_init_script(_WATCH)
        self.errors: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("dialog", lambda d: d.accept() if confirm else d.dismiss())
        self.visited: list[str] = []

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(f"console: {message.text}")

    def login(self, username: str) -> None:
        self.page.goto(f"{self.base}/login")
        self.page.fill("input[name=username]", username)
        self.page.fill("input[name=password]", PASSWORD)
        self.page.click("button[type=submit]")
        expect(self.page.locator("header .who strong")).to_be_visible()
        self.check("/login")

    def visit(self, path: str) -> None:
        response = self.page.goto(f"{self.base}{path}")
        assert response is not None
        assert "script-src 'self';" in response.headers.get("content-security-policy", ""), path
        self.page.wait_for_load_state("networkidle")
        self.check(path)

    def check(self, where: str) -> None:
        reports: list[str] = self.page.evaluate("window.__csp || []")
        assert not reports, f"{where}: the Content-Security-Policy blocked {reports}"
        assert not self.errors, f"{where}: {self.errors}"
        self.visited.append(where)


def _ward(stack: Stack, unique: str) -> dict[str, Any]:
    """A team with a patient whose SpO2 fell (readings in the archive, a red alert in the store),
    its coordinator and an administrator."""
    now = datetime.now(UTC).replace(microsecond=0)
    team, patient, kit = f"{unique[:24]}-team", f"{unique[:30]}-pt", f"{unique[:20]}K"
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, 'CSP ward')", (team,))
        add_patient(conn, stack, patient, team, "Solveig Haugen")
        conn.commit()
        coordinator, admin = staff(conn, Role.COORDINATOR, team=team), staff(conn, Role.ADMIN)
    latest = readings(stack, patient, kit, now)
    evidence = Evidence(
        measurement_id=latest, metric="spo2", value=86.0, unit="%", measured_at=now - timedelta(minutes=30)
    )
    eid = new_id()
    alert = event(
        eid, 1, EpisodeChange.OPENED, Severity.RED, patient_id=patient,
        opened_at=now - timedelta(minutes=30), last_seen_at=now - timedelta(minutes=30),
        latest=evidence, worst=evidence, threshold=Threshold(op="<=", value=91.0, unit="%"),
        baseline=None, emitted_at=now,
    )  # fmt: skip
    with psycopg.connect(stack.database_url) as conn:
        apply_events(conn, [alert])
        conn.commit()
    return {"team": team, "patient": patient, "alert": eid, "coordinator": coordinator, "admin": admin}


def test_every_console_page_runs_under_the_csp_without_a_violation(
    stack: Stack,
    service: AlertsProcess,
    browser: Browser,  # noqa: F811  (the fixture imported above)
    unique: str,
) -> None:
    """Finding 4, injected script: the queue (live updates, meters, filters that submit themselves),
    an alert with its uPlot trend chart, the patients and kits pages and every admin page load and
    work with no CSP report and no console error; an administrator's Deactivate button (a form that
    asks first) ends the coordinator's open session."""
    ward = _ward(stack, unique)

    nurse_view = Watched(browser, service.url)
    nurse_view.login(ward["coordinator"])
    expect(nurse_view.page.locator("#live")).to_have_class("live on", timeout=5000)
    row = nurse_view.page.locator(f'tr[data-id="{ward["alert"]}"]')
    expect(row).to_be_visible()
    bar = row.locator(".meter span")
    if bar.count():  # the response-time meter, drawn by console.js from data-width
        assert bar.first.evaluate("e => e.style.width").endswith("%")
    nurse_view.page.select_option("select[name=severity]", "red")  # data-autosubmit
    expect(nurse_view.page).to_have_url(f"{service.url}/?view=all&severity=red&patient=")
    nurse_view.check("/ (filter)")
    nurse_view.visit(f"/alerts/{ward['alert']}")
    expect(
        nurse_view.page.locator('#charts[data-ready="1"] .chart[data-metric="spo2"] canvas')
    ).to_be_visible(timeout=5000)
    nurse_view.check("/alerts/{id} (trend chart)")
    for path in ("/?view=mine", "/patients", "/kits", "/nowhere"):
        nurse_view.visit(path)

    admin_view = Watched(browser, service.url, confirm=True)
    admin_view.login(ward["admin"])
    for path in ("/admin/audit", "/admin/quarantine", "/kits", "/admin/users"):
        admin_view.visit(path)
    # the administrator deactivates the coordinator (a data-confirm form): her open page is logged out
    admin_view.page.locator(f'form[action="/admin/users/{ward["coordinator"]}/deactivate"] button').click()
    expect(
        admin_view.page.locator(f'form[action="/admin/users/{ward["coordinator"]}/activate"]')
    ).to_be_visible()
    admin_view.check("/admin/users (deactivate)")
    nurse_view.page.goto(f"{service.url}/")
    expect(nurse_view.page).to_have_url(f"{service.url}/login?next=%2F")
    nurse_view.page.close()
    admin_view.page.close()
    assert len(nurse_view.visited) + len(admin_view.visited) == 14
