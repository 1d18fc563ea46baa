"""Messages to the kit through the JSON API, as another system would send them: a bearer token and
httpx, the kit played by mosquitto_sub/mosquitto_pub with its own credentials. Bad input is a 422
that names the problem and stores nothing; another team's patient or alert is a 404."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest

from alerts.accounts import Role
from contracts import topics
from tests.conftest import Stack
from tests.integration.alerts_support import AlertsProcess, bearer, staff, wait_for
from tests.integration.bridge_support import BridgeProcess
from tests.integration.registry_support import new_team
from tests.integration.test_kit_messages import _kit, _listen, _publish_as_kit, _stop


@pytest.fixture
def started(stack: Stack, bridge: BridgeProcess, alerts: AlertsProcess, unique: str) -> dict[str, Any]:
    kit = _kit(stack, bridge, unique)
    for stage in (bridge, alerts):
        stage.start(wait=False)
    for stage in (bridge, alerts):
        stage.wait_healthy(90)
    return kit


def _count(stack: Stack, patient: str) -> int:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM kit_commands WHERE patient_id = %s", (patient,)).fetchone()
    assert row is not None
    return int(row[0])


def test_a_reminder_sent_through_the_api_reaches_the_kit_and_its_state_follows_the_ack(
    stack: Stack, bridge: BridgeProcess, alerts: AlertsProcess, started: dict[str, Any]
) -> None:
    kit = started
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        headers = bearer(conn, staff(conn, Role.NURSE, kit["team"]))
    url = f"{alerts.url}/api/v1/patients/{kit['patient']}/kit-messages"
    listener = _listen(stack, kit, topics.kit_topic(kit["kit"], "commands", root=bridge.root))
    try:
        sent = httpx.post(
            url, headers=headers, json={"kind": "reminder", "metric": "body_weight"}, timeout=10
        )
        assert sent.status_code == 201, sent.text
        command_id = sent.json()["command_id"]
        out, err = listener.communicate(timeout=70)
        assert listener.returncode == 0, err.decode()
    finally:
        _stop(listener)
    command = json.loads(out)
    assert (command["command_id"], command["kind"], command["metric"]) == (
        command_id,
        "reminder",
        "body_weight",
    )
    assert command["text"] == "Husk å veie deg nå og sende målingen."  # the plan's language: nb
    ack = {"schema": "vaktrom.kit-ack.v1", "kit": kit["kit"], "command_id": command_id,
           "shown_at": datetime.now(UTC).isoformat()}  # fmt: skip
    _publish_as_kit(
        stack, kit, topics.kit_topic(kit["kit"], "acks", root=bridge.root), json.dumps(ack).encode()
    )

    def state() -> str:
        listed = httpx.get(url, headers=headers, timeout=10)
        assert listed.status_code == 200, listed.text
        (only,) = [m for m in listed.json() if m["command_id"] == command_id]
        return str(only["state"])

    wait_for(lambda: state() == "shown", "the API lists the message as shown", 60)


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"kind": "message", "text": ""}, "empty"),
        ({"kind": "message", "text": "a" * 501}, "longer than 500"),
        ({"kind": "message", "text": "Hei\x1b[31m"}, "control characters"),
        ({"kind": "reminder", "metric": "weight'; DROP TABLE x;--"}, "no measurement called"),
        ({"kind": "instruction", "text": "Ring 113"}, ""),  # instructions are the out-of-hours route's
        ({"kind": "message"}, "empty"),
    ],
)
def test_bad_messages_are_refused_with_the_reason_and_store_nothing(
    stack: Stack, alerts: AlertsProcess, started: dict[str, Any], body: dict[str, Any], words: str
) -> None:
    kit = started
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        headers = bearer(conn, staff(conn, Role.NURSE, kit["team"]))
    refused = httpx.post(
        f"{alerts.url}/api/v1/patients/{kit['patient']}/kit-messages", headers=headers, json=body, timeout=10
    )
    assert refused.status_code == 422, refused.text
    assert words in refused.text
    assert _count(stack, kit["patient"]) == 0


def test_another_teams_nurse_gets_404_and_a_patient_role_cannot_send(
    stack: Stack, alerts: AlertsProcess, started: dict[str, Any], unique: str
) -> None:
    kit = started
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        other = bearer(conn, staff(conn, Role.NURSE, new_team(conn, f"{unique[:36]}-o")))
        admin = bearer(conn, staff(conn, Role.ADMIN))
    url = f"{alerts.url}/api/v1/patients/{kit['patient']}/kit-messages"
    body = {"kind": "message", "text": "Hei"}
    assert httpx.post(url, headers=other, json=body, timeout=10).status_code == 404
    assert httpx.get(url, headers=other, timeout=10).status_code == 404
    assert httpx.post(url, headers=admin, json=body, timeout=10).status_code == 403
    missing = f"{alerts.url}/api/v1/patients/P-NOSUCHPATIENT/kit-messages"
    assert httpx.post(missing, headers=other, json=body, timeout=10).status_code == 404
    assert httpx.post(url, json=body, timeout=10).status_code == 401
    assert _count(stack, kit["patient"]) == 0
