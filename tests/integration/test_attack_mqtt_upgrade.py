"""Attacker tests for upgrading a broker an older release configured (issue #28, findings 1 and 3).

An old configuration may hold a "kit" a coordinator claimed under a service account's name, or a
service account whose password was set by someone else: the upgrade gives every service account the
configured password only, and refuses to run while the old broker still does. The broker answers
every probe (MQTT 5: 135 is "Not authorized"). (The running stack's identities: test_attack_mqtt.py.)
"""

from __future__ import annotations

import base64
import contextlib
import getpass
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from services import dynsec_plugin

from contracts.mqtt_accounts import ADMIN, BRIDGE
from tests.conftest import REPO
from tests.integration.registry_support import KitClient
from tests.integration.stage_support import free_port

REFUSED = "Not authorized"  # the broker's reason code 135, as the tests' clients report it


def _old_client(username: str, password: str, *roles: str) -> dict[str, Any]:
    """A client as the plugin stored it before these accounts (PBKDF2-SHA512, 101 rounds)."""
    salt = b"old-salt-12b"
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return {
        "username": username,
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": 101,
        "roles": [{"rolename": r} for r in roles],
    }


class _OldBroker:
    """A plugin file from before these accounts, `infra/mosquitto_init.py` run on it as compose's
    mosquitto-init does, and a broker of its own on that file."""

    def __init__(self, home: Path) -> None:
        self.home, self.config = home, home / "dynamic-security.json"
        self.processes: list[subprocess.Popen[bytes]] = []

    def init(self, passwords: dict[str, str], *, broker: str = "") -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": str(REPO),
            "MQTT_ADMIN_PASSWORD": passwords[ADMIN.username],
            "MQTT_BRIDGE_PASSWORD": passwords[BRIDGE.username],
            "MOSQUITTO_UID": str(os.getuid()),
            "MQTT_BROKER": broker,
        }
        return subprocess.run(
            [sys.executable, str(REPO / "infra" / "mosquitto_init.py"), str(self.config)],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )  # fmt: skip

    def serve(self) -> int:
        """Start a broker on the file; returns its port."""
        port = free_port()
        conf = self.home / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\nallow_anonymous false\nuser {getpass.getuser()}\n"
            f"plugin {dynsec_plugin()}\nplugin_opt_config_file {self.config}\n"
        )
        self.processes.append(subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                return port
            assert time.monotonic() < deadline, "the broker on the old file did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(10)
        self.processes.clear()

    def login(self, port: int, username: str, password: str, client_id: str) -> str:
        client = KitClient("127.0.0.1", port, username, password, client_id=client_id)
        try:
            return client.connect()
        finally:
            client.close()


@pytest.fixture
def old_broker(tmp_path: Path) -> Iterator[_OldBroker]:
    broker = _OldBroker(tmp_path)
    yield broker
    broker.stop()


def _allow(acltype: str, topic: str) -> dict[str, Any]:
    return {"acltype": acltype, "topic": topic, "allow": True}


def _old_config(*clients: dict[str, Any], roles: tuple[str, ...] = ()) -> dict[str, Any]:
    """The plugin's file as the old mosquitto-init wrote it, with `clients` and their `roles` added."""
    everything = [_allow("publishClientSend", "#"), _allow("subscribePattern", "#")]
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [_old_client("vaktrom-service", "s" * 24, "pipeline"), *clients],
        "groups": [],
        "roles": [
            {"rolename": "dynsec-admin", "acls": [_allow("publishClientSend", "$CONTROL/#")]},
            {"rolename": "pipeline", "acls": everything},
            *({"rolename": r, "acls": []} for r in roles),
        ],
    }  # fmt: skip


def test_an_upgrade_gives_service_accounts_the_configured_password_only(old_broker: _OldBroker) -> None:
    """Operator upgrading, identity collision left over from before (finding 1): on the old broker a
    coordinator had claimed "kits" named vaktrom-admin (which reset its password) and
    vaktrom-bridge-1 (then a kit). After mosquitto-init's upgrade neither password the coordinator
    holds logs in any more, the configured ones do, and the bridge's account is bound again."""
    stolen = "claimed-by-a-coordinator"  # the password a coordinator claimed for the "kit"
    passwords = {ADMIN.username: "a" * 24, BRIDGE.username: "b" * 24}
    old_broker.config.write_text(json.dumps(_old_config(
        _old_client(ADMIN.username, stolen, "dynsec-admin", f"kit:{ADMIN.username}"),
        _old_client(BRIDGE.username, stolen, f"kit:{BRIDGE.username}"),
        _old_client("K-1", "k" * 24, "kit:K-1"),
        roles=(f"kit:{ADMIN.username}", f"kit:{BRIDGE.username}", "kit:K-1"),
    )))  # fmt: skip
    init = old_broker.init(passwords)
    assert init.returncode == 0, init.stderr
    assert f"set the configured password of {ADMIN.username}" in init.stdout
    port, login = old_broker.serve(), old_broker.login
    assert login(port, ADMIN.username, stolen, "registry-x") == REFUSED
    assert login(port, BRIDGE.username, stolen, BRIDGE.username) == REFUSED
    assert login(port, "vaktrom-service", "s" * 24, "svc-x") == REFUSED
    assert login(port, ADMIN.username, passwords[ADMIN.username], "registry-x") == "Success"
    assert login(port, BRIDGE.username, passwords[BRIDGE.username], BRIDGE.username) == "Success"
    assert login(port, BRIDGE.username, passwords[BRIDGE.username], "K-1") == REFUSED
    assert login(port, "K-1", "k" * 24, "K-1") == "Success"
    assert login(port, "K-1", "k" * 24, BRIDGE.username) == REFUSED


def test_an_upgrade_is_refused_while_the_old_broker_runs(old_broker: _OldBroker) -> None:
    """Operator upgrading with the broker still running (compose leaves an unchanged broker up):
    the broker would keep the publish-anything vaktrom-service in memory and write it back over the
    upgraded file at its next change. mosquitto-init refuses, says to stop the broker, and changes
    nothing; once the broker is stopped it upgrades, and vaktrom-service no longer logs in."""
    passwords = {ADMIN.username: "a" * 24, BRIDGE.username: "b" * 24}
    old_broker.config.write_text(
        json.dumps(_old_config(_old_client(ADMIN.username, "a" * 24, "dynsec-admin")))
    )
    before = old_broker.config.read_text()
    port = old_broker.serve()
    init = old_broker.init(passwords, broker=f"127.0.0.1:{port}")
    assert init.returncode == 1, init.stdout
    assert "docker compose stop mosquitto" in init.stderr
    assert old_broker.config.read_text() == before
    assert old_broker.login(port, "vaktrom-service", "s" * 24, "svc-x") == "Success"  # still the old broker
    old_broker.stop()
    init = old_broker.init(passwords, broker=f"127.0.0.1:{port}")
    assert init.returncode == 0, init.stderr
    port = old_broker.serve()
    assert old_broker.login(port, "vaktrom-service", "s" * 24, "svc-x") == REFUSED
    assert old_broker.login(port, BRIDGE.username, "b" * 24, BRIDGE.username) == "Success"
    assert old_broker.init(passwords, broker=f"127.0.0.1:{port}").returncode == 0  # nothing to change: fine
