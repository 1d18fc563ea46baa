"""`python -m registry`: patients, kits and care plans, for operators.

    python -m registry --as-team oslo-east kit pair KIT-0042     # scope: see below
    python -m registry enrol --name "Ola Nordmann" --birth-date 1948-03-01 --national-id 01034812345 \\
        --team oslo-east --condition heart_failure
    python -m registry patient show P-7K2M9QX4TZ3B
    python -m registry kit add KIT-0042 --model "Vaktrom HF kit" --device SC-1:scale --device OX-1:oximeter
    python -m registry kit assign KIT-0042 P-7K2M9QX4TZ3B [--at 2026-11-23T08:00:00+01:00]
    python -m registry kit pair KIT-0042 [--qr pairing.svg]     # one-time code (shown once)
    python -m registry kit return KIT-0042 | kit retire KIT-0042
    python -m registry kit cohort enrolment.json --credentials-out credentials.json [--broker-config FILE]
    python -m registry careplan show P-7K2M9QX4TZ3B [--history]
    python -m registry careplan set P-7K2M9QX4TZ3B --threshold HF-1.kg=1.5 --rule-off HF-3 \\
        --spo2-target 88-92 --reason "COPD with hypercapnia, target prescribed by Dr Berg"
    python -m registry careplan propose P-7K2M9QX4TZ3B [--accept --reason "..."]
    python -m registry careplan publish                          # versions Kafka has not taken yet

Scope (docs/access-control.md): a command reaches the centre-wide objects (teams, device profiles,
kits in stock) and, with `--as-team TEAM`, that team's patients, care plans and kits as a coordinator
of the team would; another team's object answers "no such ..." (exit 1). `enrol` and `kit cohort`
act for the team they name. `--every-team` reaches every team's objects (moving a patient between
teams needs it); it is written to the audit log with each change.

Reads VAKTROM_DATABASE_URL, VAKTROM_KAFKA_BOOTSTRAP, VAKTROM_IDENTITY_KEY (to enrol and show who a
patient is), VAKTROM_MQTT_HOST/PORT and VAKTROM_MQTT_ADMIN_USERNAME/PASSWORD (kit identities).
Every change is written to the audit log under the operator's login name. Exit 0: done;
1: refused (nothing changed); 2: configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import segno

from contracts import KIT_LANGUAGES, Condition, Metric
from registry import create
from registry.broker import BrokerAdminError, write_offline
from registry.bulk import enrol_cohort, write_credentials
from registry.careplans import PlanChange, PlanError, parse_threshold
from registry.identity import Identity
from registry.settings import RegistrySettings
from registry.store import Actor, KitDevice, Registry, RegistryError
from runtime.settings import ConfigError, DatabaseSettings, KafkaSettings, MqttSettings

__all__ = ["build", "main"]


def _time(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    value = datetime.fromisoformat(raw)
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{raw!r} needs an offset, e.g. 2026-11-23T08:00:00+01:00")
    return value


def _device(raw: str) -> KitDevice:
    try:
        return KitDevice.parse(raw)
    except RegistryError as exc:
        raise argparse.ArgumentTypeError(f"--device: {exc}") from None


def _threshold(raw: str) -> tuple[str, str, float | None]:
    try:
        return parse_threshold(raw)
    except PlanError as exc:
        raise argparse.ArgumentTypeError(f"--threshold: {exc}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m registry", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--as-team", metavar="TEAM", help="act for this team: reach its patients, care plans and kits"
    )
    scope.add_argument(
        "--every-team", action="store_true", help="reach every team's objects (audited as such)"
    )
    sub = parser.add_subparsers(dest="what", required=True)
    enrol = sub.add_parser("enrol", help="enrol a patient (identity sealed; care plan from the condition)")
    enrol.add_argument("--name", required=True)
    enrol.add_argument("--birth-date", type=date.fromisoformat)
    enrol.add_argument("--national-id", help="11 digits; checked, sealed, never shown in full in lists")
    enrol.add_argument("--team", required=True)
    enrol.add_argument("--condition", required=True, choices=[c.value for c in Condition])
    enrol.add_argument("--municipality")
    enrol.add_argument(
        "--language",
        choices=list(KIT_LANGUAGES),
        help="the patient's language: what the kit's texts are in (nb)",
    )
    enrol.add_argument("--patient-id", help="pseudonym to use (default: a new random one)")
    team = sub.add_parser("team", help="teams and the municipalities they serve").add_subparsers(
        dest="action", required=True
    )
    team_add = team.add_parser("add")
    team_add.add_argument("team_id")
    team_add.add_argument("name")
    team_add.add_argument("--municipality", action="append", default=[])
    patient = sub.add_parser("patient").add_subparsers(dest="action", required=True)
    patient.add_parser("show").add_argument("patient_id")

    _kit_parser(sub.add_parser("kit", help="kits: add, assign, return, retire, pair, refresh-rights, cohort"))
    _plan_parser(sub.add_parser("careplan", help="care plans: show, set, propose, publish"))
    return parser


def _kit_parser(parent: argparse.ArgumentParser) -> None:
    kit = parent.add_subparsers(dest="action", required=True)
    add = kit.add_parser("add")
    add.add_argument("kit_id")
    add.add_argument("--model")
    add.add_argument("--device", type=_device, action="append", default=[], help="SERIAL:KIND[:PROFILE]")
    assign = kit.add_parser("assign")
    assign.add_argument("kit_id")
    assign.add_argument("patient_id")
    assign.add_argument("--at", type=_time, help="from when (RFC 3339 with offset; default now)")
    for name in ("return", "retire"):
        p = kit.add_parser(name)
        p.add_argument("kit_id")
        p.add_argument("--at", type=_time, help="from when (default now)")
    profile = kit.add_parser("profile", help="a device model's measuring range for one metric")
    profile.add_argument("profile")
    profile.add_argument("metric", choices=[m.value for m in Metric])
    profile.add_argument("low", type=float)
    profile.add_argument("high", type=float)
    pair = kit.add_parser("pair")
    pair.add_argument("kit_id")
    pair.add_argument("--qr", type=Path, help="also write the code as a QR code (.svg or .png)")
    claim = kit.add_parser("claim", help="exchange a pairing code for credentials (what a kit does)")
    claim.add_argument("code")
    refresh = kit.add_parser(
        "refresh-rights",
        help="give every kit the broker rights of this release (after an upgrade that adds a kit channel)",
    )
    refresh.add_argument("kit_id", nargs="*", help="only these kits (default: every kit not retired)")
    cohort = kit.add_parser("cohort", help="a load-test or demo cohort from gateway-sim's enrolment file")
    cohort.add_argument("enrolment", type=Path)
    cohort.add_argument("--credentials-out", type=Path, required=True)
    cohort.add_argument("--team", default="cohort")
    cohort.add_argument("--since", type=_time, help="assignment start (default: 60 days ago)")
    cohort.add_argument(
        "--broker-config", type=Path,
        help="write kit identities into this stopped broker's dynamic-security file instead of over $CONTROL",
    )  # fmt: skip


def _plan_parser(parent: argparse.ArgumentParser) -> None:
    plan = parent.add_subparsers(dest="action", required=True)
    show = plan.add_parser("show")
    show.add_argument("patient_id")
    show.add_argument("--history", action="store_true")
    set_ = plan.add_parser("set")
    set_.add_argument("patient_id")
    set_.add_argument("--reason", required=True)
    set_.add_argument(
        "--threshold", type=_threshold, action="append", default=[], help="RULE.param=VALUE|default"
    )
    set_.add_argument("--rule-off", action="append", default=[])
    set_.add_argument(
        "--rule-on", action="append", default=[], help="switch an opt-in rule on, with its default parameters"
    )
    set_.add_argument("--spo2-target", choices=["88-92", "94-98"])
    set_.add_argument(
        "--language", choices=list(KIT_LANGUAGES), help="the patient's language: what the kit's texts are in"
    )
    set_.add_argument("--condition", choices=[c.value for c in Condition])
    set_.add_argument("--team")
    propose = plan.add_parser("propose")
    propose.add_argument("patient_id")
    propose.add_argument("--accept", action="store_true", help="store the proposal as the next version")
    propose.add_argument("--reason", default="")
    plan.add_parser("publish")


def build(environ: dict[str, str] | None = None) -> tuple[Registry, DatabaseSettings, MqttSettings]:
    env = dict(os.environ if environ is None else environ)
    database = DatabaseSettings.from_env(env)
    mqtt = MqttSettings.from_env(env)
    registry = create(KafkaSettings.from_env(env), mqtt, RegistrySettings.from_env(env))
    return registry, database, mqtt


@dataclasses.dataclass(frozen=True, slots=True)
class _Context:
    registry: Registry
    conn: psycopg.Connection[Any]
    actor: Actor
    mqtt: MqttSettings


def _enrol(args: argparse.Namespace, c: _Context) -> None:
    identity = Identity(name=args.name, birth_date=args.birth_date, national_id=args.national_id)
    plan = c.registry.enrol(
        c.conn, _for_team(c.actor, args.team), identity=identity, team_id=args.team,
        condition=Condition(args.condition), patient_id=args.patient_id, municipality=args.municipality,
        language=args.language,
    )  # fmt: skip
    print(f"enrolled {plan.patient_id} (team {plan.team_id}); care plan version 1 published")


def _for_team(actor: Actor, team_id: str) -> Actor:
    """The actor of a command that names its team (`enrol`, `kit cohort`): bound to it unless the
    operator chose a scope."""
    if actor.team_id is None and not actor.every_team:
        return dataclasses.replace(actor, team_id=team_id)
    return actor


def _actor(args: argparse.Namespace) -> Actor:
    """The operator, in the scope they chose (the `cli:` prefix marks the command line in the audit log)."""
    name = f"cli:{getpass.getuser()}"
    if args.as_team:
        return Actor(name, team_id=args.as_team)
    if args.every_team:
        return Actor(f"{name}+every-team")
    return Actor(name, every_team=False)


def _known_team(conn: psycopg.Connection[Any], actor: Actor) -> None:
    """`--as-team` names a team that exists: a mistyped scope is refused before anything is done."""
    if actor.team_id is None:
        return
    if conn.execute("SELECT 1 FROM teams WHERE team_id = %s", (actor.team_id,)).fetchone() is None:
        raise RegistryError(
            f"--as-team: no team {actor.team_id!r}; check its spelling (team ids are lowercase)"
        )


def _team_add(args: argparse.Namespace, c: _Context) -> None:
    c.registry.team_add(c.conn, c.actor, args.team_id, args.name, args.municipality)
    print(f"team {args.team_id} ({args.name}) serves {', '.join(args.municipality) or 'no municipality yet'}")


def _kit_profile(args: argparse.Namespace, c: _Context) -> None:
    c.registry.profile_set(
        c.conn, c.actor, args.profile, metric=Metric(args.metric), low=args.low, high=args.high
    )
    print(f"profile {args.profile}: {args.metric} {args.low:g}-{args.high:g}")


def _patient_show(args: argparse.Namespace, c: _Context) -> None:
    who = c.registry.identity(c.conn, c.actor, args.patient_id)
    plans = c.registry.careplan(c.conn, c.actor, args.patient_id)
    shown = {
        "patient_id": args.patient_id,
        "identity": msgspec.to_builtins(who) if who else None,
        "care_plan_version": plans[0][0].version if plans else None,
    }
    print(json.dumps(shown, indent=2, ensure_ascii=False))


def _kit_add(args: argparse.Namespace, c: _Context) -> None:
    c.registry.kit_add(c.conn, c.actor, args.kit_id, model=args.model, devices=args.device)
    print(
        f"kit {args.kit_id} in stock with {len(args.device)} devices; broker identity made (pair it to log "
        "in)"
    )


def _kit_assign(args: argparse.Namespace, c: _Context) -> None:
    at = c.registry.kit_assign(c.conn, c.actor, args.kit_id, args.patient_id, at=args.at)
    print(f"kit {args.kit_id} assigned to {args.patient_id} from {at.isoformat()}")


def _kit_return(args: argparse.Namespace, c: _Context) -> None:
    c.registry.kit_return(c.conn, c.actor, args.kit_id, at=args.at)
    print(f"kit {args.kit_id} back in stock")


def _kit_retire(args: argparse.Namespace, c: _Context) -> None:
    c.registry.kit_retire(c.conn, c.actor, args.kit_id, at=args.at)
    print(f"kit {args.kit_id} retired; its broker identity is gone and it was disconnected")


def _kit_pair(args: argparse.Namespace, c: _Context) -> None:
    code, expires = c.registry.pair(c.conn, c.actor, args.kit_id)
    if args.qr is not None:
        segno.make(f"VAKTROM-PAIR:{code}", error="m").save(str(args.qr), scale=8)
    print(f"pairing code for {args.kit_id}: {code} (one use, until {expires:%Y-%m-%d %H:%M %Z})")


def _kit_claim(args: argparse.Namespace, c: _Context) -> None:
    print(json.dumps(dataclasses.asdict(c.registry.claim(c.conn, args.code))))


def _kit_refresh_rights(args: argparse.Namespace, c: _Context) -> None:
    def progress(done: int, total: int) -> None:
        print(f"  {done}/{total} kits", file=sys.stderr, flush=True)

    refreshed, missing = c.registry.kit_refresh_rights(c.conn, c.actor, only=args.kit_id, progress=progress)
    print(f"broker rights refreshed for {refreshed} kits", end="")
    print(f"; {missing} kits have no broker identity (pair them to make one)" if missing else "")


def _kit_cohort(args: argparse.Namespace, c: _Context) -> None:
    rows = json.loads(args.enrolment.read_text(encoding="utf-8"))
    offline = None
    if args.broker_config is not None:
        offline = partial(
            write_offline, args.broker_config, root=c.registry.topic_root, broker=(c.mqtt.host, c.mqtt.port)
        )
    since = args.since or datetime.now(UTC) - timedelta(days=60)
    result = enrol_cohort(
        c.registry,
        c.conn,
        _for_team(c.actor, args.team),
        rows,
        team_id=args.team,
        since=since,
        offline=offline,
        clock=time.monotonic,
    )
    write_credentials(args.credentials_out, result.credentials)
    took = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
    print(
        f"cohort: {result.patients} patients, {result.kits} kits; credentials in {args.credentials_out} "
        f"({took})"
    )


def _plan_show(args: argparse.Namespace, c: _Context) -> None:
    plans = c.registry.careplan(c.conn, c.actor, args.patient_id)
    if not plans:
        raise RegistryError(f"{args.patient_id} has no care plan yet")
    for plan, published in plans if args.history else plans[:1]:
        state = "published" if published else "NOT YET PUBLISHED"
        when = f"{plan.changed_at:%Y-%m-%d %H:%M %Z}"
        print(f"# version {plan.version} by {plan.changed_by} at {when}: {plan.reason} ({state})")
        print(json.dumps(msgspec.to_builtins(plan), indent=2, ensure_ascii=False))


def _plan_set(args: argparse.Namespace, c: _Context) -> None:
    thresholds: dict[str, dict[str, float | None]] = {}
    for rule, param, value in args.threshold:
        thresholds.setdefault(rule, {})[param] = value
    change = PlanChange(
        reason=args.reason, thresholds=thresholds, rules_off=args.rule_off, rules_on=args.rule_on,
        spo2_target=args.spo2_target, condition=Condition(args.condition) if args.condition else None,
        team_id=args.team, language=args.language,
    )  # fmt: skip
    plan = c.registry.careplan_set(c.conn, c.actor, args.patient_id, change)
    print(f"care plan of {args.patient_id}: version {plan.version} stored and published")


def _plan_propose(args: argparse.Namespace, c: _Context) -> None:
    proposal = c.registry.careplan_propose(c.conn, c.actor, args.patient_id)
    shown = {"thresholds": proposal.thresholds, "basis": proposal.basis, "skipped": proposal.skipped}
    print(json.dumps(shown, indent=2))
    if args.accept:
        if not proposal.thresholds:
            raise RegistryError("nothing to accept: too few readings for a proposal")
        reason = args.reason or "accepted personal thresholds proposed from 14 days of readings"
        plan = c.registry.careplan_set(c.conn, c.actor, args.patient_id, proposal.as_change(reason))
        print(f"accepted: version {plan.version}")


def _plan_publish(_args: argparse.Namespace, c: _Context) -> None:
    print(f"published {c.registry.publish_pending(c.conn)} pending care-plan versions")


_COMMANDS = {
    ("enrol", None): _enrol,
    ("team", "add"): _team_add,
    ("patient", "show"): _patient_show,
    ("kit", "profile"): _kit_profile,
    ("kit", "add"): _kit_add,
    ("kit", "assign"): _kit_assign,
    ("kit", "return"): _kit_return,
    ("kit", "retire"): _kit_retire,
    ("kit", "refresh-rights"): _kit_refresh_rights,
    ("kit", "pair"): _kit_pair,
    ("kit", "claim"): _kit_claim,
    ("kit", "cohort"): _kit_cohort,
    ("careplan", "show"): _plan_show,
    ("careplan", "set"): _plan_set,
    ("careplan", "propose"): _plan_propose,
    ("careplan", "publish"): _plan_publish,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        registry, database, mqtt = build()
    except ConfigError as exc:
        print(f"registry: configuration: {exc}", file=sys.stderr)
        return 2
    actor = _actor(args)
    try:
        with psycopg.connect(database.url, autocommit=True, connect_timeout=10) as conn:
            _known_team(conn, actor)
            _COMMANDS[args.what, getattr(args, "action", None)](args, _Context(registry, conn, actor, mqtt))
            return 0
    except RegistryError as exc:
        print(f"registry: {exc}", file=sys.stderr)
        return 1
    except BrokerAdminError as exc:
        print(f"registry: {exc}; nothing was changed", file=sys.stderr)
        return 1
    except psycopg.OperationalError as exc:
        print(
            f"registry: cannot reach the database ({str(exc).strip()}); is it running (`infra/stack up`)?",
            file=sys.stderr,
        )
        return 1
    finally:
        if registry.publisher is not None:
            registry.publisher.close()  # type: ignore[attr-defined]


if __name__ == "__main__":
    raise SystemExit(main())
