"""The dynamic security plugin's configuration: one account per stage, from contracts.mqtt_accounts.

    python infra/mosquitto_init.py /mosquitto/data/dynamic-security.json   # production (compose)

Reads MQTT_ADMIN_PASSWORD (the registry's account) and MQTT_BRIDGE_PASSWORD (the bridge's). On the
first start it writes the file; afterwards the broker owns it (every kit the registry provisions is
in it), and a new start only upgrades it (`upgrade_config`): missing service accounts are added,
the service roles get the table's rules, the old publish-anything `vaktrom-service` account is
removed and every kit is bound to its client id. Run it with the broker stopped: a running broker
keeps its old accounts and writes them back at its next change, so when MQTT_BROKER (host:port)
answers and there is something to upgrade, it refuses and changes nothing. `infra/stack`
uses the same functions for the local broker, with the local-only accounts too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

from contracts.mqtt_accounts import ADMIN, BRIDGE, SERVICE_ACCOUNTS, BrokerAccount, kit_role_name, role_acls
from runtime.stage import check_only

__all__ = [
    "MQTT_ADMIN",
    "MQTT_BRIDGE",
    "PRODUCTION_GROUP",
    "PRODUCTION_ROOT",
    "dynsec_config",
    "dynsec_password",
    "main",
    "unbound_clients",
    "upgrade_config",
]

MQTT_ADMIN = ADMIN.username  # may change identities and access rules ($CONTROL), nothing else
MQTT_BRIDGE = BRIDGE.username  # subscribes to the kits' messages, publishes their receipts
PRODUCTION_ROOT = "vaktrom/v1"
PRODUCTION_GROUP = "vaktrom-bridge"
_RETIRED = ("vaktrom-service", "pipeline")  # the old publish-anything account and its role
# What a client may do that no role of its own allows: publish and subscribe nothing.
_DEFAULT_ACCESS = {
    "publishClientSend": False,
    "publishClientReceive": True,
    "subscribe": False,
    "unsubscribe": True,
}
_ENV = {ADMIN.username: "MQTT_ADMIN_PASSWORD", BRIDGE.username: "MQTT_BRIDGE_PASSWORD"}


def dynsec_password(password: str) -> dict[str, str | int]:
    """A client password as the dynamic security plugin stores it (PBKDF2-SHA512 over the raw salt)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": 101,
    }


def _has_password(client: dict[str, Any], password: str) -> bool:
    """Whether a stored client's hash is `password` (as the plugin checks it at login)."""
    try:
        salt = base64.b64decode(client["salt"], validate=True)
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(client["iterations"]))
        return hmac.compare_digest(base64.b64encode(digest).decode(), str(client["password"]))
    except (KeyError, TypeError, ValueError, binascii.Error):
        return False


def _accounts(passwords: dict[str, str], root: str, group: str) -> list[BrokerAccount]:
    """The service accounts to create: those with a password (the local-only ones on the local stack)."""
    return [a.filled(root=root, group=group) for a in SERVICE_ACCOUNTS if a.username in passwords]


def _client(account: BrokerAccount, password: str) -> dict[str, Any]:
    client: dict[str, Any] = {
        "username": account.username,
        "textName": account.used_by[:100],
        **dynsec_password(password),
        "roles": [{"rolename": account.role}],
    }
    if account.client_id is not None:
        client["clientid"] = account.client_id
    return client


def dynsec_config(
    passwords: dict[str, str], *, root: str = PRODUCTION_ROOT, group: str = PRODUCTION_GROUP
) -> dict[str, object]:
    """The plugin's first configuration: the service accounts named in `passwords`, nothing else.

    The default denies publishing and subscribing; each account gets only its role's rules.
    """
    accounts = _accounts(passwords, root, group)
    return {
        "defaultACLAccess": dict(_DEFAULT_ACCESS),
        "clients": [_client(a, passwords[a.username]) for a in accounts],
        "groups": [],
        "roles": [{"rolename": a.role, "acls": role_acls(a)} for a in accounts],
    }


def upgrade_config(
    doc: dict[str, Any],
    passwords: dict[str, str],
    *,
    root: str = PRODUCTION_ROOT,
    group: str = PRODUCTION_GROUP,
) -> list[str]:
    """Bring an existing configuration (with its kits) to the table; returns what changed.

    Service accounts missing from it are added with `passwords`; existing ones get the table's role
    (and no group), rules and client id, and the configured password when theirs is another: before
    kit ids were checked, a coordinator could have claimed a "kit" of that name and so hold its
    password (issue #28, finding 1). Kits (a client whose only role is `kit:<name>`)
    are bound to the client id equal to their name, which is what gateway-sim and the kit protocol
    use; a kit that logged in with another client id must change to its kit id.
    """
    changes: list[str] = []
    clients: list[dict[str, Any]] = [c for c in doc.get("clients", []) if c.get("username") not in _RETIRED]
    roles: list[dict[str, Any]] = [r for r in doc.get("roles", []) if r.get("rolename") not in _RETIRED]
    if len(clients) != len(doc.get("clients", [])):
        changes.append("removed the publish-anything account vaktrom-service")
    for holder in (*clients, *doc.get("groups", [])):  # nobody keeps a reference to the old role
        holder["roles"] = [r for r in holder.get("roles", []) if r.get("rolename") not in _RETIRED]
    if doc.get("defaultACLAccess") != _DEFAULT_ACCESS:  # e.g. widened by hand: the table's default
        doc["defaultACLAccess"] = dict(_DEFAULT_ACCESS)
        changes.append("set the default access to the table's (publish and subscribe nothing)")
    by_name = {c.get("username"): c for c in clients}
    role_names = {r.get("rolename"): r for r in roles}
    for account in _accounts(passwords, root, group):
        role = role_names.get(account.role)
        if role is None:
            roles.append({"rolename": account.role, "acls": role_acls(account)})
        else:
            role["acls"] = role_acls(account)
        client = by_name.get(account.username)
        if client is None:
            clients.append(_client(account, passwords[account.username]))
            changes.append(f"added {account.username}")
            continue
        client["roles"], client["groups"] = [{"rolename": account.role}], []
        if not _has_password(client, passwords[account.username]):
            client.update(dynsec_password(passwords[account.username]))
            changes.append(f"set the configured password of {account.username} (it had another)")
        client.pop("clientid", None)
        if account.client_id is not None:
            client["clientid"] = account.client_id
    bound = 0
    for client in clients:
        name = str(client.get("username", ""))
        is_kit = [r.get("rolename") for r in client.get("roles", [])] == [kit_role_name(name)]
        if is_kit and client.get("clientid") != name:
            client["clientid"] = name
            bound += 1
    if bound:
        changes.append(f"bound {bound} kits to their client ids")
    doc["clients"], doc["roles"] = clients, roles
    return changes


def unbound_clients(doc: dict[str, Any]) -> list[str]:
    """Clients with no bound client id that the table does not leave unbound on purpose.

    Such a client, whatever its roles, may log in with the bridge's client id, take over its
    session and receive what is queued there (the plugin lets every client receive by default).
    """
    on_purpose = {a.username for a in SERVICE_ACCOUNTS if a.client_id is None}
    return sorted(
        str(c.get("username"))
        for c in doc.get("clients", [])
        if not c.get("clientid") and c.get("username") not in on_purpose
    )


def _running(address: str) -> bool:
    """Whether a broker answers at host:port (empty: not asked)."""
    host, _, port = address.rpartition(":")
    if not host:
        return False
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return True
    except (OSError, ValueError):
        return False


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: mosquitto_init.py PATH/dynamic-security.json", file=sys.stderr)
        return 2
    target = Path(argv[1])
    passwords = {name: os.environ.get(env, "") for name, env in _ENV.items()}
    short = [env for name, env in _ENV.items() if len(passwords[name]) < 16]
    if short:
        print(f"mosquitto-init: set {' and '.join(short)} (16+ characters each)", file=sys.stderr)
        return 2
    if check_only():  # the image check: passwords read, the account table loads; nothing written
        dynsec_config(passwords)
        print(f"mosquitto-init: check only: would write or upgrade {target}", file=sys.stderr)
        return 0
    if target.exists():
        try:
            doc = json.loads(target.read_text())
        except (OSError, ValueError) as exc:
            print(f"mosquitto-init: cannot read {target}: {exc}", file=sys.stderr)
            return 1
        changes = upgrade_config(doc, passwords)
        what = "; ".join(changes) or "nothing to change"
        broker = os.environ.get("MQTT_BROKER", "")
        if changes and _running(broker):
            print(
                f"mosquitto-init: {target} needs an upgrade ({what}), but the broker at {broker} is "
                "running: it would keep its old accounts and write them back. Stop it first "
                "(`docker compose stop mosquitto`), then `docker compose up -d` again.",
                file=sys.stderr,
            )
            return 1
    else:
        doc = dynsec_config(passwords)
        what = f"wrote it with {', '.join(passwords)}"
    fresh = target.with_name(target.name + ".init-new")
    fresh.write_text(json.dumps(doc, indent=1))
    uid = int(os.environ.get("MOSQUITTO_UID", "1883"))
    if os.geteuid() == 0:
        os.chown(fresh, uid, uid)
    os.chmod(fresh, 0o600)
    fresh.replace(target)
    print(f"mosquitto-init: {target}: {what}")
    if unbound := unbound_clients(doc):
        print(
            f"mosquitto-init: warning: {len(unbound)} clients have no bound client id and may log in "
            f"with the bridge's: {', '.join(unbound[:10])}; bind each with `mosquitto_ctrl dynsec "
            "setClientId NAME NAME` or delete it (docs/broker-accounts.md)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
