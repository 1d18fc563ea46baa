"""The nurse console in a real browser: Playwright driving Debian's Chromium (installed by
infra/bootstrap) against the running service, with readings in the archive and an alert from Kafka.

Log in, watch a new red alert appear in the queue without a reload, open it, see the explanation
and the trend chart, claim it and resolve it with the keyboard. Screenshots of the queue and the
alert view are left in tests/artefacts/ for people to look at.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from alerts.accounts import Role
from contracts import EpisodeChange, Evidence, Metric, Severity, Threshold
from tests.conftest import Stack
from tests.integration.alerts_support import (
    PASSWORD,
    AlertsProcess,
    add_patient,
    event,
    new_id,
    publish,
    staff,
)
from tests.integration.archive_support import store_rows
from tests.integration.stage_support import prepare
from tests.support.records import make_measurement

CHROMIUM = "/usr/bin/chromium"
# As the machine's notes say: without the background-networking flags Chromium keeps calling
# Google's hosts, which this closed network refuses.
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: run infra/bootstrap (it installs Debian's chromium package)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def service(stack: Stack, unique: str, artefacts: Path) -> Iterator[AlertsProcess]:
    prepare(stack, unique)
    # Secure cookies stay on: Chromium accepts them on http://127.0.0.1, as on any https site.
    process = AlertsProcess(stack, unique, artefacts)
    process.start()
    yield process
    process.stop()


def readings(stack: Stack, patient: str, kit: str, now: datetime) -> str:
    """Two weeks of SpO2 around 95 %, then a fall to 86 % this morning; the id of the last one."""
    made = [
        make_measurement(patient=patient, kit=kit, metric=Metric.SPO2, reported=95.0 + (d % 3) - 1,
                         at=now - timedelta(days=d, hours=2))[2]
        for d in range(14, 0, -1)
    ]  # fmt: skip
    made += [
        make_measurement(
            patient=patient, kit=kit, metric=Metric.SPO2, reported=v, at=now - timedelta(minutes=m)
        )[2]
        for v, m in ((88.0, 90), (86.0, 30))
    ]
    store_rows(stack, made)
    return made[-1].measurement_id


def audit_for(stack: Stack, actor: str) -> list[str]:
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute(
            "SELECT action FROM audit.audit_log WHERE actor = %s ORDER BY entry_id", (actor,)
        ).fetchall()
    return [r[0] for r in rows]


def test_a_nurse_sees_a_red_alert_arrive_live_opens_claims_and_resolves_it(
    stack: Stack, service: AlertsProcess, browser: Browser, unique: str, artefacts: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    team, patient, kit = f"{unique[:24]}-team", f"{unique[:30]}-pt", f"{unique[:20]}K"
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, 'Demo east')", (team,))
        add_patient(conn, stack, patient, team, "Ingrid Åsheim")
        conn.commit()
        nurse = staff(conn, Role.NURSE, team=team)
    latest_id = readings(stack, patient, kit, now)

    page: Page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.on("dialog", lambda d: d.dismiss())
    page.goto(f"{service.url}/")
    expect(page).to_have_url(f"{service.url}/login?next=%2F")
    page.fill("input[name=username]", nurse)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("header .who strong")).to_have_text("Test Nurse")
    expect(page.locator("#live")).to_have_class("live on", timeout=5000)
    page.evaluate("window.__noReload = true")

    eid = new_id()
    evidence = Evidence(
        measurement_id=latest_id, metric="spo2", value=86.0, unit="%", measured_at=now - timedelta(minutes=30)
    )
    alert = event(
        eid, 1, EpisodeChange.OPENED, Severity.RED, patient_id=patient, rule_id="NEWS2-S1",
        explanation="SpO2 86 % (scale 1): NEWS2 SpO2 sub-score 3; rule NEWS2-S1: ≤ 91 % scores 3",
        opened_at=now - timedelta(minutes=30), last_seen_at=now - timedelta(minutes=30),
        latest=evidence, worst=evidence, threshold=Threshold(op="<=", value=91.0, unit="%"),
        baseline=None, emitted_at=now,
    )  # fmt: skip
    published = time.monotonic()
    publish(stack, service.prefix, alert)
    row = page.locator(f'tr[data-id="{eid}"]')
    expect(row).to_be_visible(timeout=2000)
    seen_after = time.monotonic() - published
    assert page.evaluate("window.__noReload") is True  # it arrived without a reload
    expect(row).to_contain_text("Ingrid Åsheim")
    expect(row).to_contain_text("NEWS2-S1")
    expect(row.locator(".badge")).to_have_text("red")
    page.screenshot(path=str(artefacts / "queue.png"), full_page=True)

    page.keyboard.press("j")
    expect(row).to_have_class(re.compile(r"\bselected\b"))
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{service.url}/alerts/{eid}")
    expect(page.locator(".explanation")).to_contain_text("SpO2 86 %")
    expect(page.locator(".evidence")).to_contain_text("<= 91.0 %")
    chart = page.locator('#charts[data-ready="1"] .chart[data-metric="spo2"] canvas')
    expect(chart).to_be_visible(timeout=5000)
    expect(page.locator(".chart .legend")).to_contain_text("threshold <= 91 %")
    page.screenshot(path=str(artefacts / "alert.png"), full_page=True)

    page.keyboard.press("c")
    expect(page.locator("#panel h2 .state")).to_have_text("claimed")
    page.keyboard.press("r")
    page.select_option("#resolve select[name=resolution]", "contacted_no_action")
    page.fill(
        "#resolve textarea[name=note]",
        "Called her: she had taken the probe off her cold finger. Re-measured 95 %.",
    )
    page.click("#resolve button.primary")
    expect(page.locator("#panel h2 .state")).to_have_text("resolved")
    expect(page.locator(".timeline")).to_contain_text("Test Nurse resolved it: Contacted patient, no action")
    expect(page.locator('#charts[data-ready="1"] canvas')).to_be_visible(timeout=5000)
    page.screenshot(path=str(artefacts / "resolved.png"), full_page=True)
    page.close()

    actions = audit_for(stack, nurse)
    for expected in ("login", "view_queue", "view_alert", "view_trend", "claim", "resolve"):
        assert expected in actions, actions
    (artefacts / "timing.txt").write_text(
        f"red alert visible in the queue {seen_after:.2f} s after Kafka had it\n"
    )


def test_a_wrong_password_gets_a_clear_message(service: AlertsProcess, browser: Browser) -> None:
    page = browser.new_page()
    page.goto(f"{service.url}/login")
    page.fill("input[name=username]", "nobody")
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_have_text("wrong username or password")
    page.close()
