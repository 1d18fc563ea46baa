"""Apply Kafka's principals to a broker: SCRAM credentials and the access rules of contracts/kafka_acl.py.

    python infra/kafka_acl.py [grant] [--prefix P]   the rules for the topics under P (as VAKTROM_KAFKA_*)
    python infra/kafka_acl.py setup                  compose: passwords from .env, then the rules

Idempotent: Kafka keeps one copy of an access rule however often it is created, and a credential
set again replaces the old one (that is how a password is rotated: docs/kafka-security.md).
For the stack's own topics (no prefix) it also revokes every ALLOW rule on them that the table does
not give, so a right taken out of the table (or added by hand) does not live on in the broker.
`infra/stack up` runs both for the stack's own topics; tests and benchmarks call `grant` for their
topic prefixes and consumer groups.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import uuid
from collections.abc import Mapping
from concurrent import futures
from typing import Any

from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from contracts.kafka_acl import ADMIN, BROKER, PRINCIPALS, KafkaAcl, kafka_acls
from runtime import kafka as rk
from runtime.settings import ConfigError, KafkaSettings
from runtime.stage import check_only

__all__ = ["AclError", "grant", "revoke_stale", "set_credentials", "to_kafka", "wait_every_broker"]

log = logging.getLogger("vaktrom.kafka_acl")

_RESOURCES = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP}
_OPERATIONS = {
    "read": AclOperation.READ,
    "write": AclOperation.WRITE,
    "describe": AclOperation.DESCRIBE,
    "create": AclOperation.CREATE,
    "describe_configs": AclOperation.DESCRIBE_CONFIGS,
}
_SCRAM_ITERATIONS = 4096  # the least Kafka accepts for SCRAM-SHA-512, as the broker's own tools use


MIN_PASSWORD = 16  # as the MQTT broker's (infra/mosquitto_init.py): a random one, not a word


class AclError(Exception):
    """The broker refused to store a credential or an access rule; the message says which and why."""


def to_kafka(rule: KafkaAcl) -> AclBinding:
    pattern = ResourcePatternType.PREFIXED if rule.prefixed else ResourcePatternType.LITERAL
    return AclBinding(
        _RESOURCES[rule.resource],
        rule.name,
        pattern,
        f"User:{rule.principal}",
        "*",
        _OPERATIONS[rule.operation],
        AclPermissionType.ALLOW,
    )


def _as_filter(acl: AclBinding) -> AclBindingFilter:
    """The filter that matches exactly `acl`."""
    return AclBindingFilter(
        acl.restype, acl.name, acl.resource_pattern_type, acl.principal, acl.host, acl.operation,
        acl.permission_type,
    )  # fmt: skip


def _describe(admin: AdminClient, query: AclBindingFilter, timeout: float) -> list[AclBinding]:
    found: list[AclBinding] = rk.wait(  # a refusal raises
        admin.describe_acls(query, request_timeout=timeout), admin, timeout=timeout + 5
    )
    return found


def _refusal(exc: rk.KafkaException) -> str:
    error = exc.args[0]
    return error.name() if isinstance(error, rk.KafkaError) else str(error)


def grant(
    kafka: KafkaSettings, prefix: str = "", *, groups: Mapping[str, str] | None = None, timeout: float = 15.0
) -> int:
    """Create the access rules for the topics under `prefix` (`kafka` signs in as a super user);
    returns how many rules there are."""
    rules = kafka_acls(prefix, groups=groups)
    admin = rk.admin(kafka, client_id="vaktrom-acl")
    failed = []
    for binding, future in admin.create_acls(
        [to_kafka(rule) for rule in rules], request_timeout=timeout
    ).items():
        try:
            rk.wait(future, admin, timeout=timeout + 5)
        except rk.KafkaException as exc:
            failed.append(f"{binding}: {_refusal(exc)}")
    if failed:
        raise AclError(f"the broker refused {len(failed)} access rules, e.g. {failed[0]}")
    _wait_applied(admin, rules[-1], timeout)
    wait_every_broker(admin, timeout=timeout)
    return len(rules)


def _covers_the_stack(acl: AclBinding) -> bool:
    """Whether `acl` reaches the stack's own topics or groups (all named "vaktrom...") or the whole
    cluster; the tests' and benchmarks' namespaces do not start with "vaktrom"."""
    if acl.restype not in (ResourceType.TOPIC, ResourceType.GROUP):
        return True  # the cluster, transactional ids, delegation tokens, users: the table gives none
    name = str(acl.name)
    if acl.resource_pattern_type == ResourcePatternType.PREFIXED:
        return name.startswith("vaktrom") or "vaktrom".startswith(name)
    return name == "*" or name.startswith("vaktrom")


def revoke_stale(kafka: KafkaSettings, *, timeout: float = 15.0) -> int:
    """Delete every ALLOW rule on the stack's topics and groups (and the cluster) that the table does
    not give for them, whoever it names; returns how many went. DENY rules only take away, and the
    namespaces of tests and benchmarks are theirs: both are left alone."""
    wanted = {_key(to_kafka(rule)) for rule in kafka_acls()}
    admin = rk.admin(kafka, client_id="vaktrom-acl")
    # None matches any name, principal or host (the stub types them as str only)
    every = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY,  # type: ignore[arg-type]
        AclPermissionType.ALLOW,
    )  # fmt: skip
    found = _describe(admin, every, timeout)
    stale = [acl for acl in found if _covers_the_stack(acl) and _key(acl) not in wanted]
    if not stale:
        return 0
    filters = [_as_filter(acl) for acl in stale]
    for query, future in admin.delete_acls(filters, request_timeout=timeout).items():
        try:
            rk.wait(future, admin, timeout=timeout + 5)
        except rk.KafkaException as exc:
            raise AclError(f"the broker refused to revoke {query}: {_refusal(exc)}") from None
    deadline = time.monotonic() + timeout
    while any(_describe(admin, query, timeout) for query in filters):  # the authorizer follows a moment later
        if time.monotonic() > deadline:
            raise AclError(f"the revoked access rules were still in force after {timeout:g} s")
        time.sleep(0.05)
    wait_every_broker(admin, timeout=timeout)
    return len(stale)


def _key(acl: AclBinding) -> tuple[object, ...]:
    return (acl.principal, acl.host, acl.operation, acl.permission_type,
            acl.restype, acl.name, acl.resource_pattern_type)  # fmt: skip


def _wait_applied(admin: AdminClient, rule: KafkaAcl, timeout: float) -> None:
    """Wait until the broker's authorizer holds `rule` (the last of one request: they are applied
    together). The controller has them at once, the authorizer a moment later; a stage started in
    between would be refused."""
    query = _as_filter(to_kafka(rule))
    deadline = time.monotonic() + timeout
    while not _describe(admin, query, timeout):
        if time.monotonic() > deadline:
            raise AclError(f"the access rules for {rule.name} were not applied within {timeout:g} s")
        time.sleep(0.05)


def set_credentials(kafka: KafkaSettings, passwords: Mapping[str, str], *, timeout: float = 15.0) -> None:
    """Set the SCRAM-SHA-512 password of each principal (a new one, or a rotation)."""
    admin = rk.admin(kafka, client_id="vaktrom-acl")
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, _SCRAM_ITERATIONS)
    upserts: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(user, info, pw.encode()) for user, pw in passwords.items()
    ]
    refused = {}
    for user, future in admin.alter_user_scram_credentials(upserts, request_timeout=timeout).items():
        try:
            rk.wait(future, admin, timeout=timeout + 5)
        except rk.KafkaException as exc:
            refused[user] = _refusal(exc)
    if refused:
        raise AclError(f"the broker refused SCRAM credentials: {refused}")
    wait_every_broker(admin, timeout=timeout)


SYNC_TOPIC_PREFIX = "_vaktrom-acl-sync."


def wait_every_broker(admin: AdminClient, *, timeout: float = 15.0) -> None:
    """Wait until every live broker has applied what the controller took so far (access rules,
    credentials), `timeout` in all. Each broker follows the cluster's metadata on its own: the
    broker a describe reached may hold a new rule while the leader a stage then writes to does not
    yet (a CI run on three nodes was refused TOPIC_AUTHORIZATION_FAILED so). librdkafka cannot send
    a describe to a broker of our choosing, but a partition's offsets are asked of its leader: a
    marker topic made now, one partition led by each live broker, answers on a broker only once that
    broker has applied everything committed before it. Twice: a broker that catches up applies
    several records at once and serves a new partition a moment before its authorizer has the rules
    of the same batch; the second round's partitions come in a later batch, after that one is
    published whole. A node that stops being live meanwhile is let go (it catches up before it
    serves again); one that stays live and silent is an AclError."""
    deadline = time.monotonic() + timeout
    brokers = sorted(admin.list_topics(timeout=_left(deadline)).brokers)
    marker = f"{SYNC_TOPIC_PREFIX}{uuid.uuid4().hex}"
    assignment = [[broker] for broker in brokers]
    try:
        created = admin.create_topics(
            [NewTopic(marker, len(brokers), replica_assignment=assignment)],
            operation_timeout=_left(deadline), request_timeout=_left(deadline),
        )  # fmt: skip
        _sync_step(admin, created[marker], "make the marker topic", _left(deadline))
        _answered(admin, marker, dict(enumerate(brokers)), deadline)
        grown = admin.create_partitions(
            [NewPartitions(marker, 2 * len(brokers), replica_assignment=assignment)],
            operation_timeout=_left(deadline), request_timeout=_left(deadline),
        )  # fmt: skip
        _sync_step(admin, grown[marker], "add the marker's second round", _left(deadline))
        _answered(admin, marker, {len(brokers) + i: b for i, b in enumerate(brokers)}, deadline)
    finally:
        try:  # also when the create timed out on our side but the controller made it
            rk.delete_topics(admin, [marker], timeout=max(_left(deadline), 5.0))
        except rk.KafkaException as exc:  # harmless left behind; `infra/topics.py --delete` takes it
            log.warning("marker topic %s not deleted: %s", marker, _refusal(exc))


def _left(deadline: float) -> float:
    """The time to `deadline`, at least a tenth of a second (a request needs some)."""
    return max(0.1, deadline - time.monotonic())


def _sync_step(admin: AdminClient, future: Any, what: str, timeout: float) -> None:
    try:
        rk.wait(future, admin, timeout=timeout)
    except rk.KafkaException as exc:
        raise AclError(f"could not {what} that shows every Kafka node is current: {_refusal(exc)}") from None


def _answered(admin: AdminClient, marker: str, leaders: dict[int, int], deadline: float) -> None:
    """Until the leader of each of `leaders` (partition -> node) answers for it, or is no longer
    live. Asked together, a second at a time, so a node that left is let go without waiting for
    the request to it to time out."""
    pending = dict(leaders)
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
    while True:
        asked = admin.list_offsets(
            {rk.TopicPartition(marker, partition): latest for partition in pending},
            request_timeout=_left(deadline),
        )
        futures.wait(asked.values(), timeout=min(1.0, _left(deadline)))
        for tp, future in asked.items():
            if not future.done():
                rk.keep_alive(admin)  # a request outstanding: the client must not be destroyed
            elif future.exception() is None:
                del pending[tp.partition]
            else:  # its leader has not applied the marker yet
                log.debug("marker partition %d: %s", tp.partition, future.exception())
        if not pending:
            return
        live = set(admin.list_topics(marker, timeout=_left(deadline)).brokers)
        for partition, node in list(pending.items()):
            if node not in live:
                log.info(
                    "Kafka node %d left while its rules were awaited; it catches up before it serves", node
                )
                del pending[partition]
        if not pending:
            return
        if time.monotonic() > deadline:
            silent = sorted(set(pending.values()))
            raise AclError(f"Kafka nodes {silent} did not answer within the wait for new access rules "
                           "(down or behind); see `infra/stack cluster`")  # fmt: skip
        time.sleep(0.05)


def _setup(kafka: KafkaSettings, environ: Mapping[str, str]) -> str:
    """Compose's first start: sign in as the broker (PLAIN), set every principal's SCRAM password
    from KAFKA_<STAGE>_PASSWORD and create the access rules for the real topics."""
    passwords = _setup_passwords(environ)
    broker = dataclasses.replace(
        kafka, sasl_mechanism="PLAIN", username=BROKER, password=environ["KAFKA_BROKER_PASSWORD"]
    )
    set_credentials(broker, passwords)
    granted, revoked = grant(broker), revoke_stale(broker)
    return (
        f"SCRAM credentials for {len(passwords)} principals, {granted} access rules, revoked {revoked} others"
    )


def _setup_passwords(environ: Mapping[str, str]) -> dict[str, str]:
    """Every principal's password from KAFKA_<STAGE>_PASSWORD; ConfigError naming the short ones."""
    names = [ADMIN, *(p.name for p in PRINCIPALS)]
    variables = {name: f"KAFKA_{name.removeprefix('vaktrom-').upper()}_PASSWORD" for name in names}
    short = [
        variable
        for variable in ["KAFKA_BROKER_PASSWORD", *variables.values()]
        if len(environ.get(variable, "")) < MIN_PASSWORD
    ]
    if short:
        raise ConfigError(
            f"{', '.join(short)} not set or shorter than {MIN_PASSWORD} characters; "
            "they come from .env (see .env.example)"
        )
    return {name: environ[variable] for name, variable in variables.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", choices=["grant", "setup"], default="grant")
    parser.add_argument("--prefix", default=os.environ.get("VAKTROM_TOPIC_PREFIX", ""))
    args = parser.parse_args(argv)
    try:
        kafka = KafkaSettings.from_env()
        if check_only():  # the image check: settings and passwords read; no connection
            found = len(_setup_passwords(os.environ)) if args.command == "setup" else 0
            print(f"kafka_acl: check only: settings valid, {found} passwords", file=sys.stderr)
            return 0
        if args.command == "setup":
            done = _setup(kafka, os.environ)
        else:
            done = f"{grant(kafka, args.prefix)} access rules in place for prefix {args.prefix!r}"
            if not args.prefix:
                done += f", revoked {revoke_stale(kafka)} the table does not give"
    except (ConfigError, rk.KafkaException, AclError) as exc:
        print(f"kafka_acl: {exc}", file=sys.stderr)
        return 1
    print(f"kafka_acl: {done}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
