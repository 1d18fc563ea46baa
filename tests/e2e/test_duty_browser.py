"""Service hours and the out-of-hours route in a real browser (issue #32, item 4): a coordinator
sets her team's hours (never open, for the test) and out-of-hours route on the duty page, puts a
physician on the roster, and a red alert from Kafka then shows in the queue as routed out of hours,
with the kit's instruction in its timeline. Screenshots duty.png and out_of_hours.png are left in
tests/artefacts/."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect

from alerts.accounts import Role
from contracts import EpisodeChange, Severity
from tests.conftest import Stack
from tests.e2e import test_console_browser
from tests.integration.alerts_support import (
    PASSWORD,
    AlertsProcess,
    add_patient,
    event,
    new_id,
    publish,
    receiver,
    set_aside_leftovers,
    staff,
    wait_for,
)
from tests.integration.stage_support import prepare

browser = test_console_browser.browser  # the module's Chromium (pytest finds it under this name)
OSLO = ZoneInfo("Europe/Oslo")
INSTRUCTION = "Legevakten er varslet. Ring 116 117 om du blir verre, eller 113 ved akutt fare."


@pytest.fixture
def service(stack: Stack, unique: str, artefacts: Path) -> Iterator[AlertsProcess]:
    prepare(stack, unique)
    process = AlertsProcess(stack, unique, artefacts)
    process.extra_env.update({
        "VAKTROM_ALERTS_ESCALATION_EVERY_S": "0.5",
        "VAKTROM_ALERTS_NOTIFY_EVERY_S": "0.5",
        "VAKTROM_ALERTS_WEBHOOK_SECRET": "a-shared-secret-of-32-characters",
    })  # fmt: skip
    yield process
    process.stop()


def test_a_coordinator_sets_hours_and_a_red_finding_follows_the_out_of_hours_route(
    stack: Stack, service: AlertsProcess, browser: Browser, unique: str, artefacts: Path
) -> None:
    team, patient = f"{unique[:24]}-team", f"{unique[:30]}-pt"
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, 'Demo east')", (team,))
        add_patient(conn, stack, patient, team, "Ingrid Åsheim")
        conn.commit()
        set_aside_leftovers(conn)  # else their notifications go before this test's, or fail its counters
        coordinator = staff(conn, Role.COORDINATOR, team=team)
        physician = staff(conn, Role.PHYSICIAN, team=team)
    with receiver() as legevakt:
        service.start()
        page: Page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(f"{service.url}/login")
        page.fill("input[name=username]", coordinator)
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        page.click("header nav >> text=Duty")
        expect(page.locator("h1")).to_contain_text("Service hours and duty roster")
        page.fill("textarea[name=weekly]", "")  # never open: every instant is out of hours
        page.fill("input[name=out_of_hours_route]", legevakt.url)
        page.fill("textarea[name=out_of_hours_instruction]", INSTRUCTION)
        page.fill("input[name=fallback_route]", "mailto:fallback@centre.example.org")
        page.click("text=Save service hours")
        expect(page.locator(".tag.warn")).to_contain_text("closed now")
        start = datetime.now(UTC).astimezone(OSLO) + timedelta(hours=1)
        page.select_option("select[name=role]", "on_call_physician")
        page.fill("input[name=username]", physician)
        page.fill("input[name=contact]", "mailto:lege@centre.example.org")
        page.fill("input[name=starts_at]", start.strftime("%Y-%m-%dT%H:%M"))
        page.fill("input[name=ends_at]", (start + timedelta(hours=8)).strftime("%Y-%m-%dT%H:%M"))
        page.click("text=Add shift")
        expect(page.locator("table.plain")).to_contain_text(physician)
        page.screenshot(path=str(artefacts / "duty.png"), full_page=True)

        eid = new_id()
        publish(stack, service.prefix, event(eid, 1, EpisodeChange.OPENED, Severity.RED, patient_id=patient))
        page.goto(f"{service.url}/")
        row = page.locator(f'tr[data-id="{eid}"]')
        expect(row).to_contain_text(f"out of hours — routed to {legevakt.url}", timeout=15000)
        row.locator("a").first.click()
        expect(page.locator(".timeline")).to_contain_text(INSTRUCTION, timeout=5000)
        page.screenshot(path=str(artefacts / "out_of_hours.png"), full_page=True)
        # the notifications worker sends it on its next round (every 2 s), not when the timeline shows it
        wait_for(lambda: legevakt.received, "the out-of-hours webhook called", 15)
