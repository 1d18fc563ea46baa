"""Kit identities in Mosquitto's dynamic security plugin: one client and one role per kit.

A kit logs in as its kit id and may publish only to its own `readings`, `status`, `fhir` and `answers` topics
and subscribe only to its own `commands` and `receipts` topics; everything else is refused by the
broker (the plugin's default denies publishing and subscribing). Changes go over the plugin's
`$CONTROL/dynamic-security/v1` topic while the broker runs: no restart, and deleting a kit's
client disconnects it at once.

Mosquitto 2.0's plugin rewrites its whole configuration file after every command, so each runtime
change costs time in proportion to the number of kits already provisioned (measured: 3,000 kits
one by one took 164 s). For a cohort of thousands, `write_offline` adds the kits to the plugin's
file while the broker is stopped, which takes a second for 10,000 kits; the broker loads them
when it starts.

A kit's client id is bound to its kit id: the broker refuses its credentials with any other client
id, so they cannot take over the bridge's (or another kit's) session. And the registry only ever
changes kits: a name that is not a kit id (`contracts.mqtt_accounts.kit_id_problem`) or a broker
client with any role but its own `kit:<id>` is refused before a password is set or a client deleted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from contracts.mqtt_accounts import KIT_ACCOUNT, kit_id_problem, kit_role_name, role_acls
from contracts.topics import MQTT_ROOT, kit_topic

__all__ = ["BrokerAdmin", "BrokerAdminError", "kit_role", "new_password", "write_offline"]

CONTROL = "$CONTROL/dynamic-security/v1"
_CHUNK = 200  # commands per control message
_ITERATIONS = 101  # what the plugin itself uses


class BrokerAdminError(RuntimeError):
    """The broker could not be reached or refused a change; the message says which and why."""


def new_password() -> str:
    return secrets.token_urlsafe(24)


def kit_role(kit_id: str, root: str = MQTT_ROOT) -> dict[str, Any]:
    """The kit's own role: publish to its readings/status/fhir/answers, subscribe to its commands/receipts."""
    kit_topic(kit_id, "readings", root=root)  # ValueError for an id that would widen its topics
    account = KIT_ACCOUNT.filled(root=root, group="", kit=kit_id)
    return {"rolename": account.role, "textname": "Vaktrom kit", "acls": role_acls(account, literal=True)}


def _check_kit_ids(kit_ids: Iterable[str]) -> None:
    for kit_id in kit_ids:
        problem = kit_id_problem(kit_id)
        if problem is not None or not kit_id or any(c in kit_id for c in "/+#"):
            raise BrokerAdminError(
                f"refused to change broker client {kit_id!r}: the registry changes kits' identities "
                f"only, and {problem or 'a kit id has no / + or #'}"
            )


def _check_kit_client(kit_id: str, client: dict[str, Any] | None) -> None:
    """A broker client the registry may change: absent, or with its own kit role only and no group."""
    if client is None:
        return
    roles = [r.get("rolename") for r in client.get("roles", [])]
    groups = [g.get("groupname") for g in client.get("groups", [])]
    # A client without a role is a kit's only while bound to its kit id: an unbound one, roles or
    # not, may log in with the bridge's client id, take over its session and get what is queued.
    lost_role = roles == [] and client.get("clientid") == kit_id
    if (roles != [kit_role_name(kit_id)] and not lost_role) or groups:
        raise BrokerAdminError(
            f"refused to change broker client {kit_id!r}: it is not a kit's identity (roles {roles}, "
            f"groups {groups}, client id {client.get('clientid')!r}, where a kit has only "
            f"{kit_role_name(kit_id)!r} and is bound to its kit id); the registry changes "
            "kits only. Look at it with `mosquitto_ctrl dynsec getClient`."
        )


def _hashed(password: str) -> dict[str, Any]:
    """A password as the plugin stores it: PBKDF2-SHA512 over the raw 12-byte salt."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _ITERATIONS)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": _ITERATIONS,
    }


class BrokerAdmin:
    """A connection to the plugin's control topic; use as a context manager."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        root: str = MQTT_ROOT,
        tls: tuple[str, str | None, str | None] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.address = f"{host}:{port}"
        self.root = root
        self.timeout = timeout
        self._host, self._port = host, port
        self._responses: dict[str, dict[str, Any]] = {}
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._refused = ""
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"vaktrom-registry-{uuid.uuid4().hex[:10]}",
            protocol=mqtt.MQTTv5,
        )
        self._client.username_pw_set(username, password)
        if tls is not None:  # MqttSettings.tls_files(): the CA, and a client certificate if any
            self._client.tls_set(
                ca_certs=tls[0], certfile=tls[1], keyfile=tls[2], cert_reqs=ssl.CERT_REQUIRED
            )
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message

    # ------------------------------------------------------------ connection
    def __enter__(self) -> BrokerAdmin:
        try:
            self._client.connect(self._host, self._port, keepalive=60)
        except OSError as exc:
            raise BrokerAdminError(
                f"cannot reach the MQTT broker at {self.address} ({exc}); is it running (`infra/stack up`)?"
            ) from exc
        self._client.loop_start()
        if not self._connected.wait(self.timeout) or self._refused:
            self._client.loop_stop()
            raise BrokerAdminError(
                f"the broker at {self.address} refused the registry's admin account "
                f"({self._refused or 'no answer'}); check VAKTROM_MQTT_ADMIN_USERNAME / "
                "VAKTROM_MQTT_ADMIN_PASSWORD"
            )
        return self

    def __exit__(self, *_exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            self._refused = str(reason)
        else:
            client.subscribe(f"{CONTROL}/response", qos=1)
        self._connected.set()

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            responses = json.loads(message.payload).get("responses", [])
        except ValueError:
            return
        with self._cond:
            for response in responses:
                key = response.get("correlationData")
                if isinstance(key, str):
                    self._responses[key] = response
            self._cond.notify_all()

    # ------------------------------------------------------------ commands
    def run(
        self, commands: Sequence[dict[str, Any]], *, tolerate: Iterable[str] = ()
    ) -> list[dict[str, Any]]:
        """Send commands in order; returns the plugin's responses. An error not in `tolerate` raises."""
        tolerated = tuple(tolerate)
        answers: list[dict[str, Any]] = []
        for start in range(0, len(commands), _CHUNK):
            chunk = [{**c, "correlationData": uuid.uuid4().hex} for c in commands[start : start + _CHUNK]]
            info = self._client.publish(CONTROL, json.dumps({"commands": chunk}), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                raise BrokerAdminError(
                    f"could not send to {CONTROL} at {self.address}: {mqtt.error_string(info.rc)}"
                )
            keys = [c["correlationData"] for c in chunk]
            deadline = time.monotonic() + self.timeout
            with self._cond:
                while not all(k in self._responses for k in keys):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise BrokerAdminError(
                            f"the broker at {self.address} did not answer {len(keys)} control commands "
                            "within "
                            f"{self.timeout:.0f} s; is the dynamic security plugin loaded?"
                        )
                    self._cond.wait(left)
                got = [self._responses.pop(k) for k in keys]
            for command, response in zip(chunk, got, strict=True):
                error = response.get("error")
                if error and not any(t in error for t in tolerated):
                    raise BrokerAdminError(f"the broker refused {command['command']}: {error}")
            answers.extend(got)
        return answers

    def _existing(self, kit_ids: Sequence[str]) -> set[str]:
        """The kits among `kit_ids` the broker already has; refuses when one is not a kit's client."""
        _check_kit_ids(kit_ids)
        answers = self.run(
            [{"command": "getClient", "username": k} for k in kit_ids], tolerate=("not found",)
        )
        found: set[str] = set()
        for kit_id, answer in zip(kit_ids, answers, strict=True):
            client = (answer.get("data") or {}).get("client")
            _check_kit_client(kit_id, client)
            if client is not None:
                found.add(kit_id)
        return found

    def provision(self, kits: Sequence[tuple[str, str | None]]) -> None:
        """Create each kit's role and client, bound to the client id that is its kit id; a None
        password leaves it unable to log in until paired.

        A kit provisioned before keeps its identity: its role's rules and its client id are set
        again, and a given password replaces the old one.
        """
        existed = self._existing([kit_id for kit_id, _ in kits])
        commands: list[dict[str, Any]] = []
        for kit_id, password in kits:
            role = kit_role(kit_id, self.root)
            if kit_id in existed:
                commands.append({"command": "modifyRole", "rolename": role["rolename"], "acls": role["acls"]})
                commands.append({"command": "setClientId", "username": kit_id, "clientid": kit_id})
                if password is not None:
                    commands.append(
                        {"command": "setClientPassword", "username": kit_id, "password": password}
                    )
                continue
            commands.append({"command": "createRole", **role})
            client: dict[str, Any] = {
                "command": "createClient",
                "username": kit_id,
                "clientid": kit_id,
                "roles": [{"rolename": role["rolename"]}],
            }
            if password is not None:
                client["password"] = password
            commands.append(client)
        # a role left behind by a half-done earlier attempt is fine: the client gets it
        self.run(commands, tolerate=("Role already exists",))

    def refresh_rights(self, kit_ids: Sequence[str]) -> int:
        """Set the role rules of the kits the broker has to what a kit may do now (a release that
        adds a channel, like `answers` and `acks`, needs it for kits made before); passwords and
        sessions are kept. Returns how many kits the broker had."""
        existed = self._existing(kit_ids)
        roles = [kit_role(k, self.root) for k in kit_ids if k in existed]
        self._same_root(roles)
        self.run([{"command": "modifyRole", "rolename": r["rolename"], "acls": r["acls"]} for r in roles])
        return len(existed)

    def _same_root(self, roles: Sequence[dict[str, Any]]) -> None:
        """Refuses (changing nothing) when a kit's role has rules, none of them under this topic
        root: the operator's shell has another VAKTROM_MQTT_TOPIC_ROOT than the deployment, and
        the kits would lose every right they use."""
        answers = self.run(
            [{"command": "getRole", "rolename": r["rolename"]} for r in roles], tolerate=("not found",)
        )
        elsewhere: dict[str, str] = {}
        for role, answer in zip(roles, answers, strict=True):
            topics = [
                a.get("topic", "") for a in ((answer.get("data") or {}).get("role") or {}).get("acls", [])
            ]
            kit_part = "/kits/" + role["rolename"].removeprefix("kit:") + "/"
            if topics and not any(t.startswith(self.root + kit_part) for t in topics):
                elsewhere[role["rolename"]] = topics[0].split(kit_part)[0]
        if elsewhere:
            names = ", ".join(f"{name} (under {root!r})" for name, root in list(elsewhere.items())[:5])
            raise BrokerAdminError(
                f"{len(elsewhere)} kits have their rights under another topic root than {self.root!r}: "
                f"{names}; set VAKTROM_MQTT_TOPIC_ROOT to the deployment's root"
            )

    def set_password(self, kit_id: str, password: str) -> None:
        if kit_id not in self._existing([kit_id]):
            raise BrokerAdminError(f"the broker has no kit {kit_id!r}; provision it first")
        self.run(  # bound again: a password never opens an account that could use another's client id
            [
                {"command": "setClientId", "username": kit_id, "clientid": kit_id},
                {"command": "setClientPassword", "username": kit_id, "password": password},
            ]
        )

    def revoke(self, kit_ids: Sequence[str]) -> None:
        """Delete the kits' clients (which disconnects them at once) and their roles."""
        self._existing(kit_ids)
        commands: list[dict[str, Any]] = []
        for kit_id in kit_ids:
            commands.append({"command": "deleteClient", "username": kit_id})
            commands.append({"command": "deleteRole", "rolename": kit_role_name(kit_id)})
        self.run(commands, tolerate=("not found",))


def _reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1):
            return True
    except OSError:
        return False


def write_offline(
    config: Path,
    kits: Sequence[tuple[str, str]],
    *,
    root: str = MQTT_ROOT,
    broker: tuple[str, int] | None = None,
) -> int:
    """Add kits (id, password) to the plugin's configuration file of a *stopped* broker; returns how many.

    The running broker would overwrite the file with its own state at its next change, so this
    refuses while `broker` answers. Existing entries of the same kits are replaced.
    """
    if broker is not None and _reachable(broker):
        raise BrokerAdminError(
            f"the broker at {broker[0]}:{broker[1]} is running; stop it first (`infra/stack down "
            "mosquitto`), "
            "or provision the kits one by one at run time"
        )
    try:
        doc = json.loads(config.read_text())
    except (OSError, ValueError) as exc:
        raise BrokerAdminError(f"cannot read the dynamic security configuration {config}: {exc}") from exc
    names = {kit_id for kit_id, _ in kits}
    _check_kit_ids(names)
    for client in doc.get("clients", []):
        if client.get("username") in names:
            _check_kit_client(str(client["username"]), client)
    roles = {kit_role_name(k) for k in names}
    doc["clients"] = [c for c in doc.get("clients", []) if c.get("username") not in names]
    doc["roles"] = [r for r in doc.get("roles", []) if r.get("rolename") not in roles]
    for kit_id, password in kits:
        role = kit_role(kit_id, root)
        doc["roles"].append(
            {"rolename": role["rolename"], "textname": role["textname"], "acls": role["acls"]}
        )
        doc["clients"].append(
            {
                "username": kit_id,
                "clientid": kit_id,
                "textName": "Vaktrom kit",
                **_hashed(password),
                "roles": [{"rolename": role["rolename"]}],
            }
        )
    stat = config.stat()
    fresh = config.with_name(config.name + ".registry-new")
    fresh.write_text(json.dumps(doc))
    os.chmod(fresh, stat.st_mode & 0o777)
    if os.geteuid() == 0:
        os.chown(fresh, stat.st_uid, stat.st_gid)
    fresh.replace(config)
    return len(kits)
