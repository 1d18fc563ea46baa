"""Attacker tests for the broker's identities (issue #28, findings 1 and 3).

Classes: identity collision (a kit named like a service account), session takeover (a kit's
credentials with someone else's client id) and the privilege of each broker account. The broker
itself answers every probe: its CONNACK, SUBACK and PUBACK reason codes (MQTT 5: 135 is "Not
authorized"). The privilege matrix is generated from contracts.mqtt_accounts, the table the broker's
configuration is made from, so an account added there is probed here too. Upgrading a broker
configured by an older release is in test_attack_mqtt_upgrade.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from alerts.accounts import Role
from contracts.mqtt_accounts import (
    BRIDGE,
    KIT_ACCOUNT,
    RESERVED_PREFIXES,
    SERVICE_ACCOUNTS,
    BrokerAccount,
    may,
)
from contracts.topics import KIT_CHANNELS, kit_topic
from registry import Registry, RegistryError
from registry.broker import BrokerAdmin, BrokerAdminError, write_offline
from registry.bulk import enrol_cohort
from tests.conftest import REPO, STATE, Broker, Stack
from tests.integration.alerts_support import AlertsProcess, bearer, staff
from tests.integration.registry_support import OPERATOR, KitClient, make_registry
from tests.integration.stage_support import broker_login, dynsec, enrol

REFUSED = "Not authorized"
# Every service account's name, each reserved prefix, the plugin's role names, other spellings.
RESERVED = sorted(
    {a.username for a in SERVICE_ACCOUNTS}
    | {"vaktrom-service", "VAKTROM-ADMIN", "vaktrom-bridge-2", "kit:K-1", "dynsec-admin", "mosquitto"}
    | {f"{p}x" for p in RESERVED_PREFIXES if p[0].isalnum()}
)
LOCAL = {"root": "+/v1", "group": "+"}  # how the local stack fills the table (infra/services.py)


def _passwords() -> dict[str, str]:
    """The service accounts' passwords the local stack made (infra/services.py)."""
    return dict(json.loads((STATE / "mosquitto" / "credentials.json").read_text()))


@pytest.fixture
def kits(stack: Stack, mqtt: Broker, database_url: str, unique: str) -> Iterator[tuple[Registry, str, Any]]:
    root = f"{unique}/v1"
    registry = make_registry(stack, root=root)
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield registry, root, conn
    registry.publisher.close()  # type: ignore[union-attr]


def _kit(registry: Registry, conn: Any, stack: Stack, name: str, **kw: Any) -> KitClient:
    registry.kit_add(conn, OPERATOR, name)
    code, _ = registry.pair(conn, OPERATOR, name)
    creds = registry.claim(conn, code)
    return KitClient(stack.mqtt_host, stack.mqtt_port, creds.username, creds.password, **kw)


def _admin(stack: Stack, root: str) -> BrokerAdmin:
    return BrokerAdmin(
        host=stack.mqtt_host, port=stack.mqtt_port, root=root,
        username=stack.values["VAKTROM_MQTT_ADMIN_USERNAME"],
        password=stack.values["VAKTROM_MQTT_ADMIN_PASSWORD"],
    )  # fmt: skip


def _login(stack: Stack, account: BrokerAccount, password: str, *, client_id: str | None = None) -> str:
    """Log in once as a service account and say what the broker answered. A bound account uses its
    client id with a persistent session of a week, as the bridge does, so its session is kept."""
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or account.client_id or f"probe-{uuid.uuid4().hex[:8]}",
        protocol=paho.MQTTv5,
    )
    client.username_pw_set(account.username, password)
    answer: list[str] = []
    done = threading.Event()
    client.on_connect = lambda _c, _u, _f, rc, _p: (answer.append(str(rc)), done.set())
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 7 * 24 * 3600
    client.connect(stack.mqtt_host, stack.mqtt_port, clean_start=False, properties=props)
    client.loop_start()
    try:
        assert done.wait(10), f"no CONNACK for {account.username}"
        return answer[0]
    finally:
        client.disconnect()
        client.loop_stop()


# ------------------------------------------------------------------ (a) identity collision
@pytest.mark.parametrize("name", RESERVED)
def test_a_kit_id_that_names_a_broker_account_is_refused_by_the_registry(
    kits: tuple[Registry, str, Any], name: str, unique: str
) -> None:
    """Finding 1, identity collision: adding, pairing, crediting or enrolling a kit named like a
    service account, a reserved prefix or a plugin role is refused, and nothing is written."""
    registry, _root, conn = kits
    with pytest.raises(RegistryError, match=r"reserved|must be"):
        registry.kit_add(conn, OPERATOR, name)
    with pytest.raises(RegistryError, match=r"reserved|must be"):
        registry.pair(conn, OPERATOR, name)
    with pytest.raises(RegistryError, match=r"reserved|must be"):
        registry.issue_credentials(conn, OPERATOR, [name])
    row = {"patient_id": f"{unique}-P", "kit": name, "devices": [], "condition": "load"}
    with pytest.raises(RegistryError, match=r"reserved|must be"):
        enrol_cohort(
            registry, conn, OPERATOR, [row], team_id=unique[:30], since=datetime.now(UTC), clock=lambda: 0.0
        )
    with pytest.raises(SystemExit, match="reserved"):
        enrol(str(conn.info.dsn), [row], since=datetime.now(UTC))
    assert conn.execute("SELECT count(*) FROM kits WHERE kit_id = %s", (name,)).fetchone()[0] == 0


# Kit ids that are no broker login at all: a trailing newline (which `$` in a pattern lets through),
# NUL, blanks, look-alike letters, wildcards and separators, one character too long.
MALFORMED = ["K-1\n", "K-1\x00", " K-1", "K-1 ", "K\t1", "v\u0430ktrom-admin",
             "\uff36AKTROM-ADMIN", "K+1", "K#1", "K/1", "$share", "K" * 65]  # fmt: skip


@pytest.mark.parametrize("name", MALFORMED, ids=repr)
def test_a_kit_id_that_is_no_broker_login_is_refused_before_the_broker_is_asked(
    kits: tuple[Registry, str, Any], name: str
) -> None:
    """Finding 1, identity collision by spelling: the registry refuses a kit id with a control
    character, blank, look-alike letter, wildcard or separator, or one that is too long, with a
    message saying what a kit id is, and writes nothing (before, "K-1\\n" reached the broker)."""
    registry, _root, conn = kits
    with pytest.raises(RegistryError, match="must be"):
        registry.kit_add(conn, OPERATOR, name)
    with pytest.raises(RegistryError, match="must be"):
        registry.issue_credentials(conn, OPERATOR, [name])
    assert (
        conn.execute("SELECT count(*) FROM kits WHERE kit_id = %s", (name.replace("\x00", ""),)).fetchone()[0]
        == 0
    )


def test_the_command_line_refuses_a_service_accounts_name_and_the_accounts_still_log_in(
    stack: Stack, mqtt: Broker, unique: str
) -> None:
    """Finding 1, identity collision, as an outsider with the registry's command line: `kit add`
    and `kit pair` of vaktrom-admin and vaktrom-bridge-1 exit non-zero naming the reservation; every
    service account still logs in afterwards with its own password."""
    env = {
        **stack.env,
        **stack.kafka_env("registry"),
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "VAKTROM_MQTT_TOPIC_ROOT": f"{unique}/v1",
    }
    for args in (["add", "vaktrom-admin"], ["add", BRIDGE.username], ["pair", "vaktrom-admin"]):
        run = subprocess.run(
            [sys.executable, "-m", "registry", "kit", *args],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip
        assert run.returncode != 0, run.stdout
        assert "reserved" in run.stderr, run.stderr
    passwords = _passwords()
    for account in SERVICE_ACCOUNTS:
        assert _login(stack, account, passwords[account.username]) == "Success", account.username


def test_the_http_api_refuses_a_service_accounts_name_as_a_kit(
    alerts: AlertsProcess, database_url: str, stack: Stack
) -> None:
    """Finding 1, identity collision, through the documented HTTP API as an administrator: adding or
    pairing a kit named like a service account is refused with 422 and a reason, nothing changes,
    and the account still logs in."""
    alerts.start()
    with (
        psycopg.connect(database_url, autocommit=True) as conn,
        httpx.Client(base_url=f"{alerts.url}/api/v1", timeout=30) as api,
    ):
        admin = bearer(conn, staff(conn, Role.ADMIN))
        for name in ("vaktrom-admin", BRIDGE.username, "Vaktrom-Load"):
            added = api.post("/kits", json={"kit_id": name}, headers=admin)
            assert added.status_code == 422, added.text
            assert "reserved" in added.json()["detail"]
            paired = api.post(f"/kits/{name}/pairing", headers=admin)
            assert paired.status_code == 422, paired.text
            assert conn.execute("SELECT count(*) FROM kits WHERE kit_id = %s", (name,)).fetchone()[0] == 0
    assert _login(stack, BRIDGE, _passwords()[BRIDGE.username]) == "Success"


def test_the_broker_admin_never_changes_a_client_that_is_not_a_kit(
    kits: tuple[Registry, str, Any], stack: Stack, unique: str, tmp_path: Path
) -> None:
    """Finding 1, defence in depth: BrokerAdmin refuses to set a password on, re-provision or delete
    a service account, or a client whose roles are not exactly its own kit role, and the offline
    writer refuses them too. The accounts keep working."""
    _registry, root, _conn = kits
    other = f"svc{unique}"[:60]  # not reserved by name, but a service's client (role `health`)
    broker_login(stack, other, role="health", client_id=other)
    with _admin(stack, root) as admin:
        for name in (BRIDGE.username, "vaktrom-admin", other):
            with pytest.raises(BrokerAdminError, match="refused"):
                admin.set_password(name, "x" * 24)
            with pytest.raises(BrokerAdminError, match="refused"):
                admin.provision([(name, "x" * 24)])
            with pytest.raises(BrokerAdminError, match="refused"):
                admin.revoke([name])
    config = tmp_path / "dynamic-security.json"
    config.write_text(
        json.dumps({"clients": [{"username": other, "roles": [{"rolename": "health"}]}], "roles": []})
    )
    for name in ("vaktrom-admin", other):
        with pytest.raises(BrokerAdminError, match="refused"):
            write_offline(config, [(name, "x" * 24)], root=root)
    got = dynsec(stack, "getClient", other)
    assert "health" in got.stdout, got.stdout
    passwords = _passwords()
    assert _login(stack, BRIDGE, passwords[BRIDGE.username]) == "Success"


def test_the_broker_admin_never_hands_out_an_unbound_client_without_roles(
    kits: tuple[Registry, str, Any], stack: Stack, unique: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Finding 1 and 3, identity collision leading to session takeover: a client an operator made
    without roles (yet) and without a bound client id grants no topic, but may log in with the
    bridge's client id, take over its session and receive what is queued there (the plugin lets
    every client receive by default). The registry must not set its password, replace or delete it
    as if it were a kit; a claimed kit's identity is bound to its kit id again."""
    registry, root, conn = kits
    other = f"ops{unique}"[:60]
    made = dynsec(stack, "createClient", other, "-p", "operator-only-pw")
    assert made.returncode == 0, made.stderr
    request.addfinalizer(lambda: dynsec(stack, "deleteClient", other))
    with _admin(stack, root) as admin:
        with pytest.raises(BrokerAdminError, match="refused"):
            admin.set_password(other, "x" * 24)
        with pytest.raises(BrokerAdminError, match="refused"):
            admin.provision([(other, "x" * 24)])
        with pytest.raises(BrokerAdminError, match="refused"):
            admin.revoke([other])
    config = tmp_path / "dynamic-security.json"
    config.write_text(json.dumps({"clients": [{"username": other, "roles": []}], "roles": []}))
    with pytest.raises(BrokerAdminError, match="refused"):
        write_offline(config, [(other, "x" * 24)], root=root)
    assert json.loads(config.read_text())["clients"] == [{"username": other, "roles": []}]
    kit = _kit(registry, conn, stack, f"{unique}-K")
    assert dynsec(stack, "setClientId", kit.username).returncode == 0  # unbound, e.g. from before
    code, _ = registry.pair(conn, OPERATOR, kit.username)
    password = registry.claim(conn, code).password
    thief = KitClient(
        stack.mqtt_host, stack.mqtt_port, kit.username, password, client_id=f"{unique}-bridge-1"
    )
    try:
        assert thief.connect() == REFUSED
    finally:
        thief.close()
        kit.close()


# ------------------------------------------------------------------ (b) session takeover
class _Bridge:
    """A stand-in for the bridge: an account of role `bridge` bound to its client id, a persistent
    session and the shared subscription, noting every disconnect and message."""

    def __init__(self, stack: Stack, name: str, root: str) -> None:
        self.client_id, self.group, self.root = f"{name}-bridge-1"[:64], f"{name}-bridge"[:64], root
        self.stack = stack
        self.password = broker_login(stack, self.client_id, role=BRIDGE.role, client_id=self.client_id)
        self.sessions: list[bool] = []
        self.disconnects: list[str] = []
        self.messages: list[str] = []
        self.cond = threading.Condition()
        self.client = self._client()

    def _client(self) -> paho.Client:
        """A paho client per connection (a reused one leaks its loop's socket pair)."""
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=paho.MQTTv5)
        client.username_pw_set(self.client_id, self.password)
        client.reconnect_delay_set(60, 60)
        client.on_connect = lambda _c, _u, flags, _rc, _p: self._note(self.sessions, flags.session_present)
        client.on_disconnect = lambda _c, _u, _f, rc, _p: self._note(self.disconnects, str(rc))
        client.on_message = lambda _c, _u, m: self._note(self.messages, m.topic)
        return client

    def _note(self, target: list[Any], item: Any) -> None:
        with self.cond:
            target.append(item)
            self.cond.notify_all()

    def wait(self, check: Any) -> bool:
        with self.cond:
            return self.cond.wait_for(check, 10)

    def connect(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        before = len(self.sessions)
        self.client.connect(self.stack.mqtt_host, self.stack.mqtt_port, clean_start=False, properties=props)
        self.client.loop_start()
        assert self.wait(lambda: len(self.sessions) > before), "the stand-in bridge did not connect"

    def subscribe(self) -> None:
        self.client.subscribe(f"$share/{self.group}/{self.root}/kits/+/readings", qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_kits_credentials_cannot_take_over_the_bridges_session(
    kits: tuple[Registry, str, Any], stack: Stack, unique: str
) -> None:
    """Finding 3, session takeover: a kit's credentials with the bridge's client id, or with
    another kit's, are refused at CONNECT; the bridge stays connected with its session, and keeps
    receiving the kits' readings."""
    registry, root, conn = kits
    a_id, b_id = f"{unique}-A", f"{unique}-B"
    bridge = _Bridge(stack, unique, root)
    bridge.connect()
    bridge.subscribe()
    a = _kit(registry, conn, stack, a_id)
    b = _kit(registry, conn, stack, b_id)
    thieves = [
        KitClient(a.host, a.port, a.username, a.password, client_id=bridge.client_id),
        KitClient(a.host, a.port, a.username, a.password, client_id=BRIDGE.client_id or ""),
        KitClient(a.host, a.port, a.username, a.password, client_id=b_id),
    ]
    try:
        assert b.connect() == "Success"
        for thief in thieves:
            assert thief.connect() == REFUSED, thief.client_id
            thief.close()
        assert b.disconnected == [], "a kit's credentials threw another kit off the broker"
        assert a.connect() == "Success"
        assert a.publish(kit_topic(a_id, "readings", root=root), b"{}") == "Success"
        assert bridge.wait(lambda: bridge.messages), "the bridge no longer gets the kits' readings"
        assert bridge.disconnects == [], "the bridge was disconnected by a kit's credentials"
        bridge.close()
        bridge.client = bridge._client()
        bridge.connect()
        assert bridge.sessions == [False, True], "the bridge's persistent session was not kept"
    finally:
        for client in (a, b, bridge):
            client.close()


def test_a_kit_cannot_join_the_bridges_shared_subscription(
    kits: tuple[Registry, str, Any], stack: Stack, unique: str
) -> None:
    """Finding 3, session takeover by subscription: a kit asking for the bridges' shared
    subscription (or any other kit's readings) gets SUBACK 135 and receives nothing."""
    registry, root, conn = kits
    kit = _kit(registry, conn, stack, f"{unique}-K")
    try:
        assert kit.connect() == "Success"
        for group in (f"{unique}-bridge", "vaktrom-bridge"):
            for channel in ("readings", "status", "fhir"):
                assert kit.subscribe(f"$share/{group}/{root}/kits/+/{channel}") == REFUSED
        assert kit.subscribe(f"{root}/kits/+/readings") == REFUSED
        assert kit.subscribe("#") == REFUSED
    finally:
        kit.close()


# ------------------------------------------------------------------ (c) privilege of each account
def _probes(root: str, kit: str) -> list[tuple[str, str]]:
    """What an attacker would try with an account: every kit channel both ways, someone else's
    kit, the bridges' shared subscriptions, the plugin's control topic, $SYS, health and everything."""
    other = f"{kit}-other"
    probes = [(action, kit_topic(k, c, root=root)) for k in (kit, other) for c in KIT_CHANNELS
              for action in ("publish", "subscribe")]  # fmt: skip
    probes += [("subscribe", f"$share/{g}/{root}/kits/+/{c}") for g in ("vaktrom-bridge", "x")
               for c in ("readings", "status", "fhir", "receipts")]  # fmt: skip
    probes += [
        ("publish", "$CONTROL/dynamic-security/v1"),
        ("subscribe", "$CONTROL/dynamic-security/v1/response"),
        ("subscribe", "$SYS/#"),
        ("publish", f"vaktrom/health/{kit}"),
        ("subscribe", f"vaktrom/health/{kit}"),
        ("publish", f"{root}/kits/+/receipts".replace("+", "x")),
        ("subscribe", f"{root}/kits/+/receipts"),
        ("subscribe", "#"),
    ]
    return probes


def _probe(stack: Stack, login: tuple[str, str, str], action: str, topic: str) -> str:
    """One probe on a fresh connection (Mosquitto 2.0 may drop a client after a refused publish)."""
    username, password, client_id = login
    client = KitClient(stack.mqtt_host, stack.mqtt_port, username, password, client_id=client_id)
    try:
        assert client.connect() == "Success", f"{username} could not log in"
        if action == "publish":
            payload = b'{"commands": []}' if topic.startswith("$CONTROL") else b"probe"
            return client.publish(topic, payload)
        return client.subscribe(topic)
    finally:
        client.close()


@pytest.mark.parametrize("account", [*SERVICE_ACCOUNTS, KIT_ACCOUNT], ids=lambda a: a.role)
def test_each_broker_account_may_do_only_what_the_table_allows(
    account: BrokerAccount, kits: tuple[Registry, str, Any], stack: Stack, unique: str
) -> None:
    """Privilege of each broker account (findings 3 and 5): for every probe, the broker allows
    exactly what contracts.mqtt_accounts grants the account and refuses the rest (PUBACK/SUBACK
    135); in particular nobody but the bridge may publish a receipt. Accounts bound to a client
    id are probed through an account of the same role made for this test, so the real ones'
    sessions are not touched."""
    registry, root, conn = kits
    kit = f"{unique}-K"
    if account is KIT_ACCOUNT:
        client = _kit(registry, conn, stack, kit)
        username, password, client_id = client.username, client.password, kit
        rights = account.filled(root=root, group="", kit=kit)
    elif account.client_id is not None:
        username = client_id = f"{unique}-{account.role}"[:64]
        password = broker_login(stack, username, role=account.role, client_id=client_id)
        rights = account.filled(**LOCAL)
    else:
        username, password, client_id = account.username, _passwords()[account.username], f"p-{unique}"[:60]
        rights = account.filled(**LOCAL)
    wrong: list[str] = []
    for action, topic in _probes(root, kit):
        expected = "allowed" if may(rights, action, topic) else REFUSED
        answer = _probe(stack, (username, password, client_id), action, topic)
        # PUBACK 0 or 16 ("no matching subscribers") and SUBACK "Granted QoS n" all let it through
        got = REFUSED if answer == REFUSED else "allowed"
        if got != expected:
            wrong.append(f"{action} {topic}: the broker said {answer!r}, the table says {expected!r}")
    assert not wrong, f"{account.username} ({account.role}):\n" + "\n".join(wrong)
    if account is not BRIDGE and account.role != "local-test":
        assert not may(rights, "publish", kit_topic(kit, "receipts", root=root)), (
            "only the bridge sends receipts"
        )
