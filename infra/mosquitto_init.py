"""The dynamic security plugin's first configuration: the registry's admin and the service account.

    python infra/mosquitto_init.py /mosquitto/data/dynamic-security.json   # production (compose)

Reads MQTT_ADMIN_PASSWORD and MQTT_SERVICE_PASSWORD. Writes the file only when it does not exist:
afterwards the broker owns it (every kit the registry provisions is in it). Standard library only,
so it runs in any Python; `infra/stack` uses the same functions for the local broker.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path

__all__ = ["MQTT_ADMIN", "MQTT_SERVICE", "dynsec_config", "dynsec_password", "main"]

MQTT_ADMIN = "vaktrom-admin"  # may change identities and access rules ($CONTROL), nothing else
MQTT_SERVICE = "vaktrom-service"  # the pipeline's own clients on the local stack: bridge, tests, load tests


def dynsec_password(password: str) -> dict[str, str | int]:
    """A client password as the dynamic security plugin stores it (PBKDF2-SHA512 over the raw salt)."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return {
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": 101,
    }


def _acl(kind: str, topic: str) -> dict[str, str | bool]:
    return {"acltype": kind, "topic": topic, "allow": True}


def dynsec_config(passwords: dict[str, str]) -> dict[str, object]:
    """The plugin's first configuration: an administrator for $CONTROL and the local service account.

    The service account may publish and subscribe anywhere: on the local stack it stands for the
    bridge, the tests (which use their own topic roots) and pooled load-test connections. Kits get
    their own narrow identities from the registry, never this one.
    """
    control = "$CONTROL/dynamic-security/#"
    return {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": True,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": [
            {
                "username": MQTT_ADMIN,
                "textName": "registry: kit provisioning",
                **dynsec_password(passwords[MQTT_ADMIN]),
                "roles": [{"rolename": "dynsec-admin"}],
            },
            {
                "username": MQTT_SERVICE,
                "textName": "local pipeline services",
                **dynsec_password(passwords[MQTT_SERVICE]),
                "roles": [{"rolename": "pipeline"}],
            },
        ],
        "groups": [],
        "roles": [
            {
                "rolename": "dynsec-admin",
                "acls": [
                    _acl("publishClientSend", control),
                    _acl("publishClientReceive", control),
                    _acl("subscribePattern", control),
                ],
            },
            {
                "rolename": "pipeline",
                "acls": [
                    _acl("publishClientSend", "#"),
                    _acl("subscribePattern", "#"),
                    _acl("unsubscribePattern", "#"),
                ],
            },
        ],
    }


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: mosquitto_init.py PATH/dynamic-security.json", file=sys.stderr)
        return 2
    target = Path(argv[1])
    if target.exists():
        print(f"mosquitto-init: {target} exists; the broker keeps its identities")
        return 0
    passwords = {
        MQTT_ADMIN: os.environ.get("MQTT_ADMIN_PASSWORD", ""),
        MQTT_SERVICE: os.environ.get("MQTT_SERVICE_PASSWORD", ""),
    }
    short = [name for name, value in passwords.items() if len(value) < 16]
    if short:
        print(
            f"mosquitto-init: set MQTT_ADMIN_PASSWORD and MQTT_SERVICE_PASSWORD (16+ characters) for {short}",
            file=sys.stderr,
        )
        return 2
    target.write_text(json.dumps(dynsec_config(passwords), indent=1))
    uid = int(os.environ.get("MOSQUITTO_UID", "1883"))
    if os.geteuid() == 0:
        os.chown(target, uid, uid)
    os.chmod(target, 0o600)
    print(f"mosquitto-init: wrote {target} with {MQTT_ADMIN} and {MQTT_SERVICE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
