"""Who logs in to the MQTT broker and what each account may do: one table for code, docs and tests.

Every stage has an account of its own with only the rights it needs (docs/broker-accounts.md is
this table in prose). The local stack and compose's `mosquitto-init` create the service accounts
from `SERVICE_ACCOUNTS`; the registry makes one identity per kit from `KIT_ACCOUNT`; the attacker
tests derive every probe's expected answer from the same rules, so an account added here is
tested too.

Topic rules are templates: `{root}` is the MQTT topic root (`vaktrom/v1`), `{group}` the bridges'
shared-subscription group and `{kit}` a kit id. The local stack fills in `+/v1` and `+`, because
every test gives its pipeline a topic root and a share group of its own; production fills in the
real root and group.

A client id bound to an account (`client_id`) is the only one the broker lets that account log in
with (Mosquitto's dynamic security plugin checks it), so stolen kit credentials cannot take over
the bridge's persistent session. Kit ids may therefore never be service names: `kit_id_problem`
says why an id is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "ADMIN",
    "BRIDGE",
    "HEALTH",
    "KIT_ACCOUNT",
    "LOAD",
    "LOCAL_TEST",
    "RESERVED_PREFIXES",
    "SERVICE_ACCOUNTS",
    "BrokerAccount",
    "kit_id_problem",
    "kit_role_name",
    "may",
    "role_acls",
    "topic_covers",
]

CONTROL = "$CONTROL/dynamic-security/#"
# Names a kit id may not start with (compared without case): the service accounts' and the
# broker's own namespaces ($SYS, $CONTROL, $share; the plugin's dynsec-admin and kit:<id> roles).
# Other role names need no reservation: a kit's role is always kit:<id>.
RESERVED_PREFIXES = ("vaktrom", "$", "kit:", "dynsec", "mosquitto")


@dataclass(frozen=True, slots=True)
class BrokerAccount:
    """One broker login: its role, who uses it, the topics it may publish to and subscribe to."""

    username: str
    role: str
    used_by: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    client_id: str | None  # the only client id it may log in with; None: any (`unbound_because`)
    local_only: bool = False  # created by the local stack only, never by compose
    unbound_because: str = ""

    def filled(self, *, root: str, group: str, kit: str = "") -> BrokerAccount:
        """The account with its templates filled in."""

        def fill(text: str) -> str:
            return text.replace("{root}", root).replace("{group}", group).replace("{kit}", kit)

        return BrokerAccount(
            username=fill(self.username),
            role=fill(self.role),
            used_by=self.used_by,
            publish=tuple(fill(t) for t in self.publish),
            subscribe=tuple(fill(t) for t in self.subscribe),
            client_id=fill(self.client_id) if self.client_id is not None else None,
            local_only=self.local_only,
            unbound_because=self.unbound_because,
        )


_KIT_IN = tuple(f"{{root}}/kits/+/{c}" for c in ("readings", "status", "fhir", "answers", "acks"))
_KIT_OUT = tuple(f"{{root}}/kits/+/{c}" for c in ("receipts", "commands"))

ADMIN = BrokerAccount(
    username="vaktrom-admin",
    role="dynsec-admin",
    used_by="registry (CLI, console and HTTP API): kit identities over $CONTROL",
    publish=(CONTROL,),
    subscribe=(CONTROL,),
    client_id=None,
    unbound_because="the console and the command line each open a connection of their own at the "
    "same time; the account can change every identity anyway, so a bound id would not limit it",
)
BRIDGE = BrokerAccount(
    username="vaktrom-bridge-1",
    role="bridge",
    used_by="ingest (the MQTT to Kafka bridge, and the commands it relays to the kits), instance 1",
    publish=("{root}/kits/+/receipts", "{root}/kits/+/commands"),
    subscribe=tuple(f"$share/{{group}}/{t}" for t in _KIT_IN),
    client_id="vaktrom-bridge-1",
)
LOAD = BrokerAccount(
    username="vaktrom-load",
    role="load",
    used_by="gateway-sim's pooled connections (load tests)",
    publish=_KIT_IN,
    subscribe=_KIT_OUT,
    client_id=None,
    local_only=True,
    unbound_because="a pool has many connections, each with a client id of its own; the account "
    "exists on the local stack only",
)
HEALTH = BrokerAccount(
    username="vaktrom-health",
    role="health",
    used_by="`infra/stack status`: a publish/subscribe round trip (compose uses the anonymous "
    "loopback listener of infra/mosquitto/health.acl instead)",
    publish=("vaktrom/health/#",),
    subscribe=("vaktrom/health/#",),
    client_id="vaktrom-health",
    local_only=True,
)
LOCAL_TEST = BrokerAccount(
    username="vaktrom-local-test",
    role="local-test",
    used_by="integration tests standing in for kits and outsiders, each under its own topic root",
    publish=("#",),
    subscribe=("#",),
    client_id=None,
    local_only=True,
    unbound_because="tests open many connections with ids of their own; never created in production",
)
SERVICE_ACCOUNTS: tuple[BrokerAccount, ...] = (ADMIN, BRIDGE, LOAD, HEALTH, LOCAL_TEST)

KIT_ACCOUNT = BrokerAccount(
    username="{kit}",
    role="kit:{kit}",
    used_by="one kit (made by the registry when the kit is added, password set when it is claimed)",
    publish=tuple(f"{{root}}/kits/{{kit}}/{c}" for c in ("readings", "status", "fhir", "answers", "acks")),
    subscribe=tuple(f"{{root}}/kits/{{kit}}/{c}" for c in ("commands", "receipts")),
    client_id="{kit}",
)


def kit_role_name(kit_id: str) -> str:
    return f"kit:{kit_id}"


def kit_id_problem(kit_id: str) -> str | None:
    """Why `kit_id` cannot be a kit's broker identity, or None when it can."""
    folded = kit_id.casefold()
    names = {a.username.casefold() for a in SERVICE_ACCOUNTS}  # also when one lacks the prefix
    if folded in names or folded.startswith(RESERVED_PREFIXES):
        return (
            f"kit id {kit_id!r} is reserved for the broker's own accounts (names starting with "
            f"{', '.join(repr(p) for p in RESERVED_PREFIXES)} or naming a service account); "
            "give the kit another id, e.g. its serial number"
        )
    return None


def role_acls(account: BrokerAccount, *, literal: bool = False) -> list[dict[str, Any]]:
    """The dynamic security plugin's ACL entries for a filled-in account."""
    subscribe = "subscribeLiteral" if literal else "subscribePattern"
    acls = [{"acltype": "publishClientSend", "topic": t, "allow": True} for t in account.publish]
    acls += [{"acltype": subscribe, "topic": t, "allow": True} for t in account.subscribe]
    if account.role == ADMIN.role:
        acls.append({"acltype": "publishClientReceive", "topic": CONTROL, "allow": True})
    return acls


def topic_covers(rule: str, topic: str, *, published: bool = False) -> bool:
    """Whether an ACL rule (with + and #) covers a topic or subscription filter, level by level.

    As the plugin checks it (measured on Mosquitto 2.0.11): a published topic is matched by MQTT's
    rules, where a leading wildcard never matches a `$` topic; a subscription is compared level by
    level, so a rule `#` covers `$SYS/#`, `$CONTROL/...` and `$share/...` filters too. A shared
    subscription is checked with its `$share/{group}/` prefix.
    """
    rules, levels = rule.split("/"), topic.split("/")
    if published and topic.startswith("$") and rules[0] in ("+", "#"):
        return False
    for index, part in enumerate(rules):
        if part == "#":
            return True
        if index >= len(levels):
            return False
        if part not in ("+", levels[index]):
            return False
    return len(rules) == len(levels)


def may(account: BrokerAccount, action: str, topic: str) -> bool:
    """Whether a filled-in account may `publish` to a topic or `subscribe` to a filter."""
    rules = account.publish if action == "publish" else account.subscribe
    return any(topic_covers(rule, topic, published=action == "publish") for rule in rules)
