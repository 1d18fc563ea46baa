"""Issue #32's care loop in a real browser, in Norwegian: a nurse switches her console to bokmål,
sees one row for a patient with a blood-pressure problem and a symptom answer, opens it, sends the
patient's kit a message and sees the kit's acknowledgement; then, with the centre closed, a red
finding of the same patient follows the out-of-hours route (the legevakt's webhook) and the kit is
told what to do.

Real parts throughout: the bridge relays the console's message to the kit's MQTT `commands` topic,
where `mosquitto_sub` with the kit's own credentials receives it, and `mosquitto_pub` sends the
kit's acknowledgement back through the bridge and Kafka to the alerts service. Screenshots
care-loop-queue-nb.png, care-loop-alert-nb.png and care-loop-out-of-hours-nb.png are left in
tests/artefacts/.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect

from alerts import duty
from alerts.accounts import Role
from contracts import EpisodeChange, Severity, topics
from streams.monitor.catalogue import RULES
from tests.conftest import Stack
from tests.e2e import test_console_browser
from tests.integration.alerts_support import (
    PASSWORD,
    AlertsProcess,
    event,
    new_id,
    publish,
    receiver,
    staff,
    wait_for,
)
from tests.integration.bridge_support import BridgeProcess
from tests.integration.stage_support import prepare
from tests.integration.test_kit_messages import _kit, _listen, _publish_as_kit

browser = test_console_browser.browser  # the module's Chromium (pytest finds it under this name)
MESSAGE = "Hei! Vi har sett blodtrykket ditt. Mål det igjen i kveld, og ring oss om du blir svimmel."
INSTRUCTION = "Sentralen er stengt. Ring legevakten på 116 117, eller 113 ved akutt fare."


@pytest.fixture
def stages(stack: Stack, unique: str, artefacts: Path) -> Iterator[tuple[BridgeProcess, AlertsProcess]]:
    prepare(stack, unique)
    bridge = BridgeProcess(stack, unique, artefacts)
    alerts = AlertsProcess(stack, unique, artefacts)
    alerts.extra_env.update({
        "VAKTROM_ALERTS_ESCALATION_EVERY_S": "0.5",
        "VAKTROM_ALERTS_NOTIFY_EVERY_S": "0.5",
        "VAKTROM_ALERTS_WEBHOOK_SECRET": "a-shared-secret-of-32-characters",
    })  # fmt: skip
    yield bridge, alerts
    alerts.stop()
    bridge.stop()


def _finding(episode: str, patient: str, rule_id: str, severity: Severity, text: str, **kw: Any) -> Any:
    """An episode opened by the monitor, with the monitor's own wording ("<seen>; rule <id>: <summary>")."""
    rule = RULES[rule_id]
    now = datetime.now(UTC)
    return event(
        episode, 1, EpisodeChange.OPENED, severity, patient_id=patient, rule_id=rule_id,
        rule_source=rule.source, explanation=f"{text}; rule {rule_id}: {rule.summary}",
        opened_at=now - timedelta(minutes=20), last_seen_at=now - timedelta(minutes=5), **kw,
    )  # fmt: skip


def _acknowledge(stack: Stack, kit: dict[str, Any], root: str, raw: bytes) -> dict[str, Any]:
    """What the kit does with a command: show it and say so on its `acks` channel."""
    command = json.loads(raw)
    assert command["schema"] == "vaktrom.kit-command.v1"
    ack = {"schema": "vaktrom.kit-ack.v1", "kit": kit["kit"], "command_id": command["command_id"],
           "shown_at": datetime.now(UTC).replace(microsecond=0).isoformat()}  # fmt: skip
    _publish_as_kit(stack, kit, topics.kit_topic(kit["kit"], "acks", root=root), json.dumps(ack).encode())
    return dict(command)


def test_a_nurse_in_norwegian_messages_the_kit_and_a_red_out_of_hours_goes_to_the_legevakt(
    stack: Stack, stages: tuple[BridgeProcess, AlertsProcess], browser: Browser, unique: str, artefacts: Path
) -> None:
    bridge, alerts = stages
    kit = _kit(stack, bridge, unique)
    patient, commands = kit["patient"], topics.kit_topic(kit["kit"], "commands", root=bridge.root)
    with psycopg.connect(stack.database_url) as conn:
        nurse = staff(conn, Role.NURSE, kit["team"])
    for stage in (bridge, alerts):
        stage.start(wait=False)
    for stage in (bridge, alerts):
        stage.wait_healthy(90)
    pressure, symptom = new_id(), new_id()
    publish(
        stack, alerts.prefix,
        _finding(pressure, patient, "BP-2", Severity.YELLOW, "Systolic blood pressure 186 mmHg: severe range",
                 metric="bp_systolic"),
        _finding(symptom, patient, "SYM-1", Severity.YELLOW,
                 "The patient answered more breathless at 6 Dec 09:12 CET", metric=None),
    )  # fmt: skip

    page: Page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.goto(f"{alerts.url}/login")
    page.fill("input[name=username]", nurse)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    # her own choice of language, kept with her account: the switch in the header submits itself
    page.select_option("select[name=language]", "nb")
    expect(page.locator("html")).to_have_attribute("lang", "nb")
    expect(page.locator("header nav")).to_contain_text("Pasienter")

    # one row for the patient, with both problems: the blood pressure leads (opened first), the answer too
    row = page.locator(f'tr[data-patient="{patient}"]')
    expect(row).to_have_count(1, timeout=15000)
    expect(row).to_contain_text("2 åpne problemer")
    expect(row.locator(f'li[data-episode="{pressure}"]')).to_contain_text("BP-2")
    expect(row.locator(f'li[data-episode="{symptom}"]')).to_contain_text("SYM-1")
    # the monitor's English explanations, in her language
    expect(row.locator(f'li[data-episode="{pressure}"]')).to_contain_text("Systolisk blodtrykk 186 mmHg")
    expect(row.locator(f'li[data-episode="{symptom}"]')).to_contain_text("at pusten er tyngre")
    page.screenshot(path=str(artefacts / "care-loop-queue-nb.png"), full_page=True)

    row.locator(f'li[data-episode="{pressure}"] a').click()
    expect(page.locator("#other-problems")).to_contain_text("SYM-1")
    listener = _listen(stack, kit, commands)
    try:
        page.fill("#kit textarea[name=text]", MESSAGE)
        page.click("#kit >> text=Send til utstyret")
        out, err = listener.communicate(timeout=70)
        assert listener.returncode == 0, err.decode()
    finally:
        listener.kill()
    command = _acknowledge(stack, kit, bridge.root, out)
    assert (command["kind"], command["text"]) == ("message", MESSAGE)

    def shown() -> bool:
        page.reload()
        return "vist på utstyret" in (page.locator("#kit").text_content() or "")

    wait_for(shown, "the kit's acknowledgement on the alert page", 60)
    expect(page.locator("#kit")).to_contain_text(MESSAGE)
    page.screenshot(path=str(artefacts / "care-loop-alert-nb.png"), full_page=True)

    # the centre closes (no opening hours at all), and the patient's pressure falls with dizziness
    with receiver() as legevakt:
        with psycopg.connect(stack.database_url) as conn:
            duty.save_service(
                conn, kit["team"], weekly={}, out_of_hours_route=legevakt.url,
                out_of_hours_instruction=INSTRUCTION, fallback_route="mailto:reserve@sentral.example.org",
                actor="test",
            )  # fmt: skip
        listener = _listen(stack, kit, commands)
        red = new_id()
        try:
            publish(
                stack, alerts.prefix,
                _finding(red, patient, "SYM-3", Severity.RED,
                         "Systolic 84 mm[Hg] on 6 Dec 21:40 CET with dizziness answered 6 Dec 21:45 CET",
                         metric=None),
            )  # fmt: skip
            page.goto(f"{alerts.url}/")
            red_problem = page.locator(f'tr[data-patient="{patient}"] li[data-episode="{red}"]')
            expect(red_problem).to_contain_text("SYM-3", timeout=15000)
            expect(page.locator(f'tr[data-patient="{patient}"]')).to_contain_text(
                f"utenfor åpningstid — sendt til {legevakt.url}", timeout=15000
            )
            out, err = listener.communicate(timeout=70)
            assert listener.returncode == 0, err.decode()
        finally:
            listener.kill()
        instruction = _acknowledge(stack, kit, bridge.root, out)
        assert (instruction["kind"], instruction["text"]) == ("instruction", INSTRUCTION)
        wait_for(lambda: legevakt.received, "the legevakt's webhook called", 30)
        (_headers, body), *_ = legevakt.received
        payload = json.loads(body)
        assert (payload["episode_id"], payload["severity"]) == (red, "red")
    page.goto(f"{alerts.url}/alerts/{red}")
    expect(page.locator("#panel .timeline")).to_contain_text("utenfor åpningstid")
    expect(page.locator("#panel .timeline")).to_contain_text(INSTRUCTION)
    page.screenshot(path=str(artefacts / "care-loop-out-of-hours-nb.png"), full_page=True)
    page.close()
