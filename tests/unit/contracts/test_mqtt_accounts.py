"""The broker accounts' table: reserved kit ids and the topic rules the attacker tests rely on."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.mqtt_accounts import (
    ADMIN,
    BRIDGE,
    KIT_ACCOUNT,
    RESERVED_PREFIXES,
    SERVICE_ACCOUNTS,
    kit_id_problem,
    may,
    topic_covers,
)

_KIT_ID = st.from_regex(re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,40}"), fullmatch=True)


@pytest.mark.parametrize("account", SERVICE_ACCOUNTS, ids=lambda a: a.username)
def test_no_service_account_or_role_can_be_a_kit_id(account: object) -> None:
    """Every service account's name, in any case, is refused as a kit id."""
    for name in (account.username, account.username.upper()):  # type: ignore[attr-defined]
        assert kit_id_problem(name) is not None, name


@given(prefix=st.sampled_from(RESERVED_PREFIXES), rest=_KIT_ID)
def test_a_reserved_prefix_is_refused_in_any_case(prefix: str, rest: str) -> None:
    assert kit_id_problem((prefix + rest).swapcase()) is not None


@given(_KIT_ID)
def test_other_ids_are_kit_ids(kit_id: str) -> None:
    reserved = kit_id.casefold().startswith(RESERVED_PREFIXES)
    assert (kit_id_problem(kit_id) is None) is not reserved


def test_the_message_says_what_to_do() -> None:
    assert "give the kit another id" in (kit_id_problem("vaktrom-admin") or "")
    assert kit_id_problem("dynsec-admin") is not None
    assert kit_id_problem("kit:K-1") is not None


def test_only_the_bridge_may_send_receipts_and_no_stage_may_touch_control() -> None:
    receipt = "vaktrom/v1/kits/K-1/receipts"
    for account in SERVICE_ACCOUNTS:
        filled = account.filled(root="vaktrom/v1", group="vaktrom-bridge")
        if account.role == "local-test":  # local stack only, stands in for every party in tests
            continue
        assert may(filled, "publish", receipt) is (account is BRIDGE), account.username
        assert may(filled, "publish", "$CONTROL/dynamic-security/v1") is (account is ADMIN)


def test_a_kit_may_use_only_its_own_topics() -> None:
    kit = KIT_ACCOUNT.filled(root="vaktrom/v1", group="", kit="K-1")
    assert may(kit, "publish", "vaktrom/v1/kits/K-1/readings")
    assert not may(kit, "publish", "vaktrom/v1/kits/K-2/readings")
    assert not may(kit, "publish", "vaktrom/v1/kits/K-1/receipts")
    assert may(kit, "subscribe", "vaktrom/v1/kits/K-1/receipts")
    assert not may(kit, "subscribe", "$share/vaktrom-bridge/vaktrom/v1/kits/+/readings")
    assert kit.client_id == "K-1"


@pytest.mark.parametrize(
    ("rule", "topic", "published", "covered"),
    [
        ("a/+/c", "a/b/c", True, True),
        ("a/+/c", "a/b/d", True, False),
        ("a/#", "a/b/c", True, True),
        ("#", "$SYS/x", True, False),  # MQTT: a leading wildcard never matches a $ topic
        ("#", "$SYS/#", False, True),  # but the plugin's subscribe check covers it (measured)
        ("$share/+/r/kits/+/readings", "$share/g/r/kits/+/readings", False, True),
        ("r/kits/+/readings", "$share/g/r/kits/+/readings", False, False),
        ("a/b", "a/b/c", True, False),
    ],
)
def test_topic_rules_match_as_the_broker_does(rule: str, topic: str, published: bool, covered: bool) -> None:
    assert topic_covers(rule, topic, published=published) is covered


def test_the_docs_table_lists_every_account_with_its_client_id() -> None:
    """docs/broker-accounts.md keeps up with the table: each account and its bound client id."""
    from pathlib import Path  # noqa: PLC0415

    doc = (Path(__file__).resolve().parents[3] / "docs" / "broker-accounts.md").read_text()
    rows = {line.split("`")[1]: line for line in doc.splitlines() if line.startswith("| `")}
    for account in (*SERVICE_ACCOUNTS, KIT_ACCOUNT):
        assert account.username in rows, account.username
        bound = f"`{account.client_id}` only" if account.client_id else "any"
        assert bound in rows[account.username], account.username
