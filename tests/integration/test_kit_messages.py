"""Messages to the kit, end to end with the real services: a nurse sends one from the console, the
kit (mosquitto_sub with the kit's own credentials) receives it on its commands topic, acknowledges it
(mosquitto_pub), and the console shows it shown; another team's nurse cannot message the patient;
hostile acknowledgements become rejections and stop nothing."""

from __future__ import annotations

import json
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote_plus

import psycopg
import pytest

from alerts.accounts import Role
from contracts import EpisodeChange, Severity, topics
from registry import KitDevice
from tests.conftest import Stack
from tests.integration.alerts_support import (
    AlertsProcess,
    ConsoleClient,
    event,
    new_id,
    publish,
    staff,
    wait_for,
)
from tests.integration.bridge_support import BridgeProcess
from tests.integration.registry_support import OPERATOR, enrol, make_registry, new_team
from tests.integration.stage_support import consume, produce


def _kit(stack: Stack, bridge: BridgeProcess, unique: str) -> dict[str, Any]:
    """A team, a patient of it with a claimed kit; the kit's broker login."""
    registry = make_registry(stack, root=bridge.root, prefix=bridge.prefix)
    kit_id = f"{unique}-K"[:64]
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        team = new_team(conn, f"{unique[:36]}-t")
        patient = enrol(registry, conn, team, "Patient K")
        registry.kit_add(conn, OPERATOR, kit_id, devices=[KitDevice(f"{unique}-SC"[:64], "scale")])
        registry.kit_assign(conn, OPERATOR, kit_id, patient, at=datetime.now(UTC) - timedelta(days=1))
        code, _ = registry.pair(conn, OPERATOR, kit_id)
        creds = registry.claim(conn, code)
    registry.publisher.close()  # type: ignore[union-attr]
    return {
        "team": team,
        "patient": patient,
        "kit": kit_id,
        "user": creds.username,
        "password": creds.password,
    }


def _as_kit(stack: Stack, kit: dict[str, Any]) -> list[str]:
    return ["-h", stack.mqtt_host, "-p", str(stack.mqtt_port), "-u", kit["user"], "-P", kit["password"],
            "-i", kit["kit"], "-V", "5"]  # fmt: skip


def _listen(stack: Stack, kit: dict[str, Any], topic: str) -> subprocess.Popen[bytes]:
    """mosquitto_sub as the kit: prints the first message on `topic` and exits."""
    return subprocess.Popen(
        ["mosquitto_sub", *_as_kit(stack, kit), "-q", "1", "-t", topic, "-C", "1", "-W", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _stop(listener: subprocess.Popen[bytes]) -> None:
    """End a listener that may still run, and close its pipes."""
    listener.kill()
    listener.communicate(timeout=10)


def _publish_as_kit(stack: Stack, kit: dict[str, Any], topic: str, payload: bytes) -> None:
    result = subprocess.run(
        ["mosquitto_pub", *_as_kit(stack, kit), "-q", "1", "-t", topic, "-s"],
        input=payload, capture_output=True, timeout=20, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()


def _row(stack: Stack, patient: str) -> dict[str, Any] | None:
    with psycopg.connect(stack.database_url) as conn:
        found = conn.execute(
            "SELECT command_id, body, sent_at, shown_at, kit_id FROM kit_commands WHERE patient_id = %s",
            (patient,),
        ).fetchall()
    if not found:
        return None
    (command_id, body, sent_at, shown_at, kit_id), *_ = found
    return {
        "id": command_id,
        "body": body,
        "sent": sent_at,
        "shown": shown_at,
        "kit": kit_id,
        "rows": len(found),
    }


@pytest.fixture
def started(stack: Stack, bridge: BridgeProcess, alerts: AlertsProcess, unique: str) -> dict[str, Any]:
    kit = _kit(stack, bridge, unique)
    for stage in (bridge, alerts):
        stage.start(wait=False)
    for stage in (bridge, alerts):
        stage.wait_healthy(90)
    return kit


def test_a_nurses_message_reaches_the_kit_and_its_acknowledgement_the_timeline(
    stack: Stack, bridge: BridgeProcess, alerts: AlertsProcess, started: dict[str, Any]
) -> None:
    """Console form -> outbox -> Kafka -> bridge -> the kit's commands topic; the kit's ack ->
    bridge -> Kafka -> alerts: the patient page says the message was shown on the kit."""
    kit = started
    with psycopg.connect(stack.database_url) as conn:
        nurse = staff(conn, Role.NURSE, kit["team"])
    listener = _listen(stack, kit, topics.kit_topic(kit["kit"], "commands", root=bridge.root))
    console = ConsoleClient(alerts.url)
    try:
        console.login(nurse)
        text = "Hei! Husk å veie deg i morgen tidlig."
        sent = console.post(
            f"/patients/{kit['patient']}/kit-message",
            data={"csrf": console.csrf, "kind": "message", "text": text},
        )
        assert sent.status_code == 303, sent.text
        out, err = listener.communicate(timeout=70)
        assert listener.returncode == 0, err.decode()
        command = json.loads(out)
        assert command["schema"] == "vaktrom.kit-command.v1"
        assert (command["kit"], command["kind"], command["text"]) == (kit["kit"], "message", text)
        assert "patient_id" not in command  # the kit gets no pseudonym
        shown = datetime.now(UTC).replace(microsecond=0)
        ack = {"schema": "vaktrom.kit-ack.v1", "kit": kit["kit"], "command_id": command["command_id"],
               "shown_at": shown.isoformat()}  # fmt: skip
        _publish_as_kit(
            stack, kit, topics.kit_topic(kit["kit"], "acks", root=bridge.root), json.dumps(ack).encode()
        )
        wait_for(lambda: (_row(stack, kit["patient"]) or {}).get("shown") is not None, "the ack stored", 60)
        row = _row(stack, kit["patient"])
        assert row is not None
        assert (row["id"], row["kit"], row["shown"], row["rows"]) == (
            command["command_id"],
            kit["kit"],
            shown,
            1,
        )
        page = console.get(f"/patients/{kit['patient']}")
        assert page.status_code == 200
        assert "shown on the kit at" in page.text
        assert text in page.text
    finally:
        _stop(listener)
        console.close()


def test_another_teams_nurse_cannot_message_the_patients_kit(
    stack: Stack, alerts: AlertsProcess, bridge: BridgeProcess, started: dict[str, Any], unique: str
) -> None:
    """A nurse of another team gets the 404 every other view of the patient gives, and nothing is queued;
    a form without the CSRF token is refused too."""
    kit = started
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        other = new_team(conn, f"{unique[:36]}-o")
        stranger = staff(conn, Role.NURSE, other)
        nurse = staff(conn, Role.NURSE, kit["team"])
    console = ConsoleClient(alerts.url)
    try:
        console.login(stranger)
        refused = console.post(
            f"/patients/{kit['patient']}/kit-message",
            data={"csrf": console.csrf, "kind": "message", "text": "hi"},
        )
        assert refused.status_code == 404
        console.login(nurse)
        forged = console.post(
            f"/patients/{kit['patient']}/kit-message", data={"kind": "message", "text": "hi"}
        )
        assert forged.status_code == 403
        too_long = console.post(
            f"/patients/{kit['patient']}/kit-message",
            data={"csrf": console.csrf, "kind": "message", "text": "x" * 501},
        )
        assert too_long.status_code == 303
        assert "longer+than+500" in too_long.headers["location"]
    finally:
        console.close()
    assert _row(stack, kit["patient"]) is None


def test_hostile_acknowledgements_are_rejected_and_stop_nothing(
    stack: Stack, bridge: BridgeProcess, alerts: AlertsProcess, started: dict[str, Any]
) -> None:
    """Bytes that are no JSON, an ack of a command never sent, one naming another kit: each becomes a
    rejection with its reason; the bridge stays healthy."""
    kit = started
    topic = topics.kit_topic(kit["kit"], "acks", root=bridge.root)
    now = datetime.now(UTC).isoformat()
    unknown = {
        "schema": "vaktrom.kit-ack.v1",
        "kit": kit["kit"],
        "command_id": uuid.uuid4().hex,
        "shown_at": now,
    }
    other = {**unknown, "kit": "SOMEONE-ELSE"}
    for payload in (b"\xff\x00not json", json.dumps(unknown).encode(), json.dumps(other).encode(), b"{}"):
        _publish_as_kit(stack, kit, topic, payload)
    records = consume(stack, topics.rejection_topic(bridge.prefix), until=4, timeout=40)
    reasons = sorted(value["reason"] for _k, value, _h in records)
    assert reasons == ["malformed", "schema", "topic_mismatch", "unknown_command"]
    bridge.wait_healthy(10)
    assert consume(stack, topics.kit_ack_topic(bridge.prefix), timeout=3, idle=2) == []


def test_a_reminder_from_the_alert_page_appears_in_the_alerts_timeline(
    stack: Stack, bridge: BridgeProcess, alerts: AlertsProcess, started: dict[str, Any]
) -> None:
    """On an alert of the patient, a nurse sends a weight reminder: the kit gets the standard text
    with the metric, in the patient's language (a new plan's: bokmål); the alert's timeline says it
    was sent, then shown on the kit."""
    kit = started
    episode = new_id()
    publish(alerts.stack, alerts.prefix, event(episode, 1, EpisodeChange.OPENED, Severity.YELLOW,
                                               patient_id=kit["patient"], metric="body_weight"))  # fmt: skip
    wait_for(lambda: _alert_stored(stack, episode), "the alert stored")
    with psycopg.connect(stack.database_url) as conn:
        nurse = staff(conn, Role.NURSE, kit["team"])
    listener = _listen(stack, kit, topics.kit_topic(kit["kit"], "commands", root=bridge.root))
    console = ConsoleClient(alerts.url)
    try:
        console.login(nurse)
        sent = console.post(
            f"/alerts/{episode}/kit-message",
            data={"csrf": console.csrf, "kind": "reminder", "metric": "body_weight", "text": ""},
        )
        assert sent.status_code == 303, sent.text
        assert "error" not in sent.headers["location"]
        out, err = listener.communicate(timeout=70)
        assert listener.returncode == 0, err.decode()
        command = json.loads(out)
        assert (command["kind"], command["metric"]) == ("reminder", "body_weight")
        assert command["text"] == "Husk å veie deg nå og sende målingen."
        page = console.get(f"/alerts/{episode}")
        assert "sent a reminder to the kit" in page.text
        ack = {"schema": "vaktrom.kit-ack.v1", "kit": kit["kit"], "command_id": command["command_id"],
               "shown_at": datetime.now(UTC).isoformat()}  # fmt: skip
        _publish_as_kit(
            stack, kit, topics.kit_topic(kit["kit"], "acks", root=bridge.root), json.dumps(ack).encode()
        )
        wait_for(
            lambda: "shown on the kit at" in console.get(f"/alerts/{episode}/panel").text,
            "ack in timeline",
            60,
        )
        api = console.get(f"/api/v1/alerts/{episode}").json()
        assert [t["kind"] for t in api["timeline"] if t["kind"].startswith("kit_")] == [
            "kit_sent",
            "kit_shown",
        ]
    finally:
        _stop(listener)
        console.close()


def _alert_stored(stack: Stack, episode: str) -> bool:
    with psycopg.connect(stack.database_url) as conn:
        return conn.execute("SELECT 1 FROM alerts WHERE episode_id = %s", (episode,)).fetchone() is not None


def _request(patient: str, text: str) -> tuple[str, bytes]:
    now = datetime.now(UTC)
    body = {"schema": "vaktrom.kit-command-request.v1", "command_id": uuid.uuid4().hex, "patient_id": patient,
            "kind": "message", "text": text, "sent_at": now.isoformat(),
            "expires_at": (now + timedelta(hours=1)).isoformat(), "origin": "alerts"}  # fmt: skip
    return patient, json.dumps(body).encode()


def test_a_command_waits_for_a_stopped_bridge_and_its_ack_is_known_after_a_restart(
    stack: Stack, bridge: BridgeProcess, unique: str
) -> None:
    """Queued while the bridge is down, the command reaches the kit once it starts; after another
    restart the bridge still knows it (read back, not relayed again) and takes the kit's ack."""
    kit = _kit(stack, bridge, unique)
    key, payload = _request(kit["patient"], "Ring oss i dag.")
    produce(stack, topics.kit_command_topic(bridge.prefix), [(key, payload)])
    listener = _listen(stack, kit, topics.kit_topic(kit["kit"], "commands", root=bridge.root))
    try:
        bridge.start()
        out, err = listener.communicate(timeout=70)
        assert listener.returncode == 0, err.decode()
    finally:
        _stop(listener)
    command = json.loads(out)
    assert command["command_id"] == json.loads(payload)["command_id"]
    assert bridge.stop() == 0
    again = _listen(stack, kit, topics.kit_topic(kit["kit"], "commands", root=bridge.root))
    try:
        bridge.start()
        ack = {"schema": "vaktrom.kit-ack.v1", "kit": kit["kit"], "command_id": command["command_id"],
               "shown_at": datetime.now(UTC).isoformat()}  # fmt: skip
        _publish_as_kit(
            stack, kit, topics.kit_topic(kit["kit"], "acks", root=bridge.root), json.dumps(ack).encode()
        )
        acks = consume(stack, topics.kit_ack_topic(bridge.prefix), until=1, timeout=40)
        assert [(v["command_id"], v["patient_id"]) for _k, v, _h in acks] == [
            (command["command_id"], kit["patient"])
        ]
        with pytest.raises(subprocess.TimeoutExpired):
            again.communicate(timeout=5)  # committed before the restart: not relayed again
    finally:
        _stop(again)


def test_an_ack_after_a_crash_is_taken_whether_or_not_the_command_was_committed(
    stack: Stack, bridge: BridgeProcess, unique: str
) -> None:
    """The bridge is killed the moment the kit has the command, perhaps before it committed it. The
    restarted bridge may relay it again (the same id: the kit shows it once), and it must take the
    kit's ack straight away: an ack that comes before the command is read again is not unknown."""
    kit = _kit(stack, bridge, unique)
    key, payload = _request(kit["patient"], "Ring oss i dag.")
    command_id = json.loads(payload)["command_id"]
    produce(stack, topics.kit_command_topic(bridge.prefix), [(key, payload)])
    listener = _listen(stack, kit, topics.kit_topic(kit["kit"], "commands", root=bridge.root))
    try:
        bridge.start()
        out, err = listener.communicate(timeout=70)
        assert listener.returncode == 0, err.decode()
    finally:
        _stop(listener)
    bridge.kill()
    assert json.loads(out)["command_id"] == command_id
    bridge.start()
    ack = {"schema": "vaktrom.kit-ack.v1", "kit": kit["kit"], "command_id": command_id,
           "shown_at": datetime.now(UTC).isoformat()}  # fmt: skip
    _publish_as_kit(
        stack, kit, topics.kit_topic(kit["kit"], "acks", root=bridge.root), json.dumps(ack).encode()
    )
    acks = consume(stack, topics.kit_ack_topic(bridge.prefix), until=1, timeout=40)
    assert [(v["command_id"], v["patient_id"]) for _k, v, _h in acks] == [(command_id, kit["patient"])]
    receipts = consume(stack, topics.rejection_topic(bridge.prefix), until=1, timeout=3)
    assert [v["reason"] for _k, v, _h in receipts] == []


def _reminder_on_the_kit(
    stack: Stack, bridge: BridgeProcess, kit: dict[str, Any], console: ConsoleClient, data: dict[str, str]
) -> dict[str, Any]:
    """Send a reminder from the patient page; the command the kit receives."""
    listener = _listen(stack, kit, topics.kit_topic(kit["kit"], "commands", root=bridge.root))
    try:
        sent = console.post(
            f"/patients/{kit['patient']}/kit-message", data={"csrf": console.csrf, "kind": "reminder", **data}
        )
        assert sent.status_code == 303, sent.text
        assert "error" not in sent.headers["location"]
        out, err = listener.communicate(timeout=70)
        assert listener.returncode == 0, err.decode()
        return dict(json.loads(out))
    finally:
        _stop(listener)


def _set_language(console: ConsoleClient, language: str) -> None:
    assert console.post("/me/language", data={"language": language, "csrf": console.csrf}).status_code == 303


def test_a_standard_reminder_is_in_the_patients_language_not_the_nurses(
    stack: Stack, bridge: BridgeProcess, alerts: AlertsProcess, started: dict[str, Any]
) -> None:
    """The kit shows the care plan's language: a nurse whose console is in English sends a reminder
    without text to a patient with a new plan (bokmål) and the kit gets bokmål; a coordinator sets
    the plan to English in the plan form, and a nurse whose console is in bokmål sends one in
    English. A nurse's own text goes out as written; a language the kit has no texts in is refused."""
    kit = started
    with psycopg.connect(stack.database_url) as conn:
        nurse = staff(conn, Role.NURSE, kit["team"])
        coordinator = staff(conn, Role.COORDINATOR, kit["team"])
    console, planner = ConsoleClient(alerts.url), ConsoleClient(alerts.url)
    try:
        console.login(nurse)
        _set_language(console, "en")
        page = console.get(f"/patients/{kit['patient']}").text
        assert "The kit shows its standard texts in Norsk (bokmål)" in page
        command = _reminder_on_the_kit(stack, bridge, kit, console, {"metric": "body_weight", "text": ""})
        assert command["text"] == "Husk å veie deg nå og sende målingen."

        planner.login(coordinator)
        for hostile in ("de", "nb\x00", "<b>en</b>", "x" * 8):
            refused = planner.post(
                f"/patients/{kit['patient']}/careplan",
                data={"csrf": planner.csrf, "reason": "try", "language": hostile},
            )
            assert refused.status_code in (303, 422), refused.text
            if refused.status_code == 303:
                assert "must be nb" in unquote_plus(refused.headers["location"])
        changed = planner.post(
            f"/patients/{kit['patient']}/careplan",
            data={"csrf": planner.csrf, "reason": "the patient reads English", "language": "en"},
        )
        assert changed.status_code == 303, changed.text
        assert "error" not in changed.headers["location"]
        with psycopg.connect(stack.database_url) as conn:
            versions = conn.execute(
                "SELECT version, document->>'language' FROM care_plans WHERE patient_id = %s "
                "ORDER BY version",
                (kit["patient"],),
            ).fetchall()
        assert versions[-1][1] == "en"
        assert [v for v, _ in versions] == list(
            range(1, len(versions) + 1)
        )  # the refused ones stored nothing
        assert len(versions) == 2

        _set_language(console, "nb")
        page = console.get(f"/patients/{kit['patient']}").text
        assert "Utstyret viser standardtekstene på English" in page
        command = _reminder_on_the_kit(stack, bridge, kit, console, {"metric": "pulse", "text": ""})
        assert command["text"] == "Reminder: please measure your pulse now and send the measurement."
        command = _reminder_on_the_kit(stack, bridge, kit, console, {"metric": "", "text": ""})
        assert (command.get("metric"), command["text"]) == (
            None,
            "Reminder: please take today's measurements and send them.",
        )
        own = "Husk vekta før frokost, er du snill."
        command = _reminder_on_the_kit(stack, bridge, kit, console, {"metric": "body_weight", "text": own})
        assert command["text"] == own
    finally:
        console.close()
        planner.close()
