"""The patient-level queue in bokmål, in a real browser (issue #32, items 5 and 6): Playwright
driving Debian's Chromium against the running service.

A nurse whose browser asks for English switches the console to Norsk in its header; her patient's
two open problems share one row, a third arrives live into the same row without a reload, the
alert page lists the patient's other problems, and she takes responsibility ("Ta ansvar") with the
keyboard. Another team's patient never shows. No Content-Security-Policy report on the way.
Screenshots `patient-queue-nb.png` and `patient-alert-nb.png` are left in tests/artefacts/.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, expect

from alerts.accounts import Role
from contracts import EpisodeChange, Severity
from tests.conftest import Stack
from tests.e2e.test_console_browser import browser  # noqa: F401  (the module's browser fixture)
from tests.e2e.test_console_csp import Watched
from tests.integration.alerts_support import AlertsProcess, add_patient, event, new_id, publish, staff
from tests.integration.stage_support import prepare


@pytest.fixture
def service(stack: Stack, unique: str, artefacts: Path) -> Iterator[AlertsProcess]:
    prepare(stack, unique)
    process = AlertsProcess(stack, unique, artefacts)
    process.language = "nb"  # the centre's default; the browser's English wins until she chooses
    process.start()
    yield process
    process.stop()


def test_a_nurse_works_the_patient_queue_in_bokmal(
    stack: Stack,
    service: AlertsProcess,
    browser: Browser,  # noqa: F811  (the fixture imported above)
    unique: str,
    artefacts: Path,
) -> None:
    """One row per patient with all their problems, live, in bokmål, scoped to the team."""
    now = datetime.now(UTC).replace(microsecond=0)
    team, other_team = f"{unique[:24]}-a", f"{unique[:24]}-b"
    patient, neighbour, stranger = f"{unique[:28]}-p1", f"{unique[:28]}-p2", f"{unique[:28]}-p3"
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, 'Hjemmeoppfølging øst')", (team,))
        conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, 'Et annet team')", (other_team,))
        add_patient(conn, stack, patient, team, "Ingrid Åsheim")
        add_patient(conn, stack, neighbour, team, "Per Li")
        add_patient(conn, stack, stranger, other_team, "Ola Hemmelig")
        conn.commit()
        nurse = staff(conn, Role.NURSE, team=team)
    at = {
        "opened_at": now - timedelta(minutes=20),
        "last_seen_at": now - timedelta(minutes=20),
        "emitted_at": now,
    }
    weight, spo2, silent, neighbour_eid, stranger_eid = (new_id() for _ in range(5))
    publish(
        stack, service.prefix,
        event(weight, 1, EpisodeChange.OPENED, Severity.YELLOW, patient_id=patient, rule_id="HF-1",
              metric="body_weight", explanation="Weight 82.3 kg, +2.3 kg since 19 Nov (3 days); rule HF-1: "
              "> 2 kg in 3 days", **at),
        event(neighbour_eid, 1, EpisodeChange.OPENED, Severity.YELLOW, patient_id=neighbour, **at),
        event(stranger_eid, 1, EpisodeChange.OPENED, Severity.RED, patient_id=stranger, **at),
    )  # fmt: skip

    view = Watched(browser, service.url)
    view.login(nurse)
    page = view.page
    expect(page.locator("html")).to_have_attribute("lang", "en")  # Chromium asks for en-US
    page.select_option("#language select[name=language]", "nb")  # data-autosubmit
    expect(page.locator("html")).to_have_attribute("lang", "nb")
    expect(page.locator("header nav")).to_contain_text("Kø")
    expect(page.locator("table.queue thead")).to_contain_text("Åpne problemer")
    expect(page.locator("#live")).to_have_class("live on", timeout=5000)
    view.check("/ (in bokmål)")
    page.evaluate("window.__noReload = true")

    row = page.locator(f'tr[data-patient="{patient}"]')
    expect(row).to_have_count(1, timeout=10000)
    expect(row).to_contain_text("Ingrid Åsheim")
    expect(row).to_contain_text("Vekt 82,3 kg, +2,3 kg siden 19. nov. (3 døgn)")
    # A red SpO2 problem for the same patient arrives live: still one row, now led by it.
    publish(
        stack, service.prefix,
        event(spo2, 1, EpisodeChange.OPENED, Severity.RED, patient_id=patient, **at),
        event(silent, 1, EpisodeChange.OPENED, Severity.INFO, patient_id=patient, rule_id="kit-silent",
              explanation="No message from the kit since 1 Nov 09:00 CET (13 h); rule kit-silent: no message "
              "from the kit for longer than expected", **at),
    )  # fmt: skip
    expect(row.locator("li.problem")).to_have_count(3, timeout=5000)
    assert page.evaluate("window.__noReload") is True
    expect(row).to_have_count(1)
    expect(row.locator("td").first).to_contain_text("rød")
    expect(row.locator("li.problem").nth(0)).to_have_attribute("data-episode", spo2)
    expect(row.locator("li.problem").nth(1)).to_have_attribute("data-episode", weight)
    expect(row).to_contain_text("Ingen melding fra utstyret siden 1. nov. 09:00 CET (13 t)")
    rows = page.locator("#rows tr[data-patient]")
    expect(rows.first).to_have_attribute("data-patient", patient)  # the red patient first
    expect(page.locator("#rows")).not_to_contain_text("Ola Hemmelig")
    expect(page.locator(f'tr[data-patient="{stranger}"]')).to_have_count(0)
    view.check("/ (live, in bokmål)")
    page.screenshot(path=str(artefacts / "patient-queue-nb.png"), full_page=True)

    page.keyboard.press("j")
    expect(row).to_have_class(re.compile(r"\bselected\b"))
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{service.url}/alerts/{spo2}")
    # the URL changes when the new page commits, before its deferred script (the keyboard) runs: a
    # key pressed then is lost (CI lost "c" so)
    page.wait_for_load_state("load")
    others = page.locator("#other-problems")
    expect(others).to_contain_text("Pasientens andre åpne problemer")
    expect(others.locator(f'a[href="/alerts/{weight}"]')).to_be_visible()
    expect(others.locator(f'a[href="/alerts/{silent}"]')).to_be_visible()
    expect(others).not_to_contain_text(neighbour)
    expect(page.locator("#claim button")).to_contain_text("Ta ansvar")
    page.keyboard.press("c")
    expect(page.locator("#panel h2 .state")).to_have_text("tatt")
    view.check(f"/alerts/{spo2} (claimed)")
    page.screenshot(path=str(artefacts / "patient-alert-nb.png"), full_page=True)
    page.goto(f"{service.url}/?by=problem")
    expect(page.locator(f'#rows tr[data-id="{weight}"]')).to_be_visible()
    view.check("/?by=problem")
    page.close()
