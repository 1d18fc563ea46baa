"""The registry's operations: enrol, kits (add, assign, return, retire, pair, claim), care plans.

Each operation runs in one database transaction, checks its input first and changes nothing when
it refuses (`RegistryError`, with `status` for the HTTP API and a message that says what to do).
Every change is written to the audit log with who did it. Changes outside the database (the
broker's kit identities, the care-plan topic) happen after the checks and are safe to repeat:
a kit's broker identity is provisioned idempotently, and an unpublished care-plan version is
published again by `publish_pending`.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import msgspec
import psycopg
from psycopg import errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from contracts import RULE_IDS, CarePlan, Condition, Metric
from registry.broker import BrokerAdmin, new_password
from registry.careplans import PlanChange, Proposal, apply_change, default_plan, propose
from registry.identity import Identity, IdentityError, Sealer, check_national_id

__all__ = ["Actor", "Credentials", "KitDevice", "Registry", "RegistryError"]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"  # no 0/O, 1/I/L, U: read aloud and typed by people


_KIT = "SELECT * FROM kits WHERE kit_id = %s"
_KIT_FOR_UPDATE = _KIT + " FOR UPDATE"


class RegistryError(Exception):
    """Refused; nothing was changed. `status` is what the HTTP API answers (404, 409, 422, 503)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Actor:
    """Who does it, for the audit log and the care-plan history."""

    username: str
    ip: str | None = None
    team_id: str | None = None  # a user bound to one team manages only its patients


@dataclass(frozen=True, slots=True)
class KitDevice:
    serial: str
    kind: str
    profile: str | None = None


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a kit needs to log in; the password is shown once and kept nowhere by Vaktrom."""

    kit_id: str
    username: str
    password: str
    host: str
    port: int
    topic_root: str


class PlanPublisher(Protocol):
    def publish(self, plans: Sequence[CarePlan]) -> None: ...


def _check_id(value: str, what: str) -> str:
    if not _ID.match(value):
        raise RegistryError(
            f"{what} {value!r} must be 1-64 letters, digits or . _ : - (starting with a letter or digit)"
        )
    return value


def _code_hash(code: str) -> bytes:
    return hashlib.sha256(code.replace("-", "").replace(" ", "").upper().encode()).digest()


def new_pseudonym() -> str:
    return "P-" + "".join(secrets.choice(_CODE_ALPHABET) for _ in range(12))


class Registry:
    """Operations over one connection at a time (callers pass it; autocommit or idle)."""

    def __init__(
        self,
        *,
        sealer: Sealer | None,
        broker: Callable[[], BrokerAdmin] | None,
        publisher: PlanPublisher | None,
        broker_address: tuple[str, int] = ("127.0.0.1", 1883),
        topic_root: str = "vaktrom/v1",
        pairing_ttl: timedelta = timedelta(hours=72),
    ) -> None:
        self.sealer = sealer
        self.broker = broker
        self.publisher = publisher
        self.broker_address = broker_address
        self.topic_root = topic_root
        self.pairing_ttl = pairing_ttl

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _audit(
        cur: psycopg.Cursor[Any],
        actor: Actor,
        action: str,
        *,
        target: str | None = None,
        patient_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        cur.execute(
            "INSERT INTO audit_log (actor, action, target, patient_id, ip, detail) VALUES (%s, %s, %s, %s, "
            "%s, %s)",
            (actor.username, action, target, patient_id, actor.ip, Jsonb(detail or {})),
        )

    @staticmethod
    def _patient(cur: psycopg.Cursor[Any], patient_id: str, actor: Actor) -> dict[str, Any]:
        cur.execute("SELECT * FROM patients WHERE patient_id = %s", (patient_id,))
        row = cur.fetchone()
        if row is None or (actor.team_id is not None and row["team_id"] != actor.team_id):
            raise RegistryError(f"no patient {patient_id!r} (enrol the patient first)", 404)
        return dict(row)

    @staticmethod
    def _kit(cur: psycopg.Cursor[Any], kit_id: str, *, lock: bool = True) -> dict[str, Any]:
        cur.execute(_KIT_FOR_UPDATE if lock else _KIT, (kit_id,))
        row = cur.fetchone()
        if row is None:
            raise RegistryError(f"no kit {kit_id!r} (add it with `kit add` first)", 404)
        return dict(row)

    def _require_broker(self) -> Callable[[], BrokerAdmin]:
        if self.broker is None:
            raise RegistryError(
                "kit identities need the broker's admin account: set VAKTROM_MQTT_ADMIN_USERNAME and "
                "VAKTROM_MQTT_ADMIN_PASSWORD",
                503,
            )
        return self.broker

    def _require_sealer(self) -> Sealer:
        if self.sealer is None:
            raise RegistryError("patients' identities are sealed at rest: set VAKTROM_IDENTITY_KEY", 503)
        return self.sealer

    # ------------------------------------------------------------ patients
    def enrol(
        self,
        conn: psycopg.Connection[Any],
        actor: Actor,
        *,
        identity: Identity,
        team_id: str,
        condition: Condition,
        patient_id: str | None = None,
        municipality: str | None = None,
        timezone: str = "Europe/Oslo",
    ) -> CarePlan:
        """A new patient: a pseudonym, a sealed identity, care plan version 1 (the condition's defaults)."""
        sealer = self._require_sealer()
        if not identity.name.strip():
            raise RegistryError("the patient's name is required")
        if actor.team_id is not None and team_id != actor.team_id:
            raise RegistryError(f"you may enrol patients of team {actor.team_id} only", 403)
        try:
            national_id = check_national_id(identity.national_id) if identity.national_id else None
        except IdentityError as exc:
            raise RegistryError(str(exc)) from None
        identity = Identity(
            name=identity.name.strip(), birth_date=identity.birth_date, national_id=national_id
        )
        patient_id = _check_id(patient_id, "patient id") if patient_id else new_pseudonym()
        plan = default_plan(
            patient_id, team_id, condition, by=actor.username, at=datetime.now(UTC), timezone=timezone
        )
        sealed, key_id = sealer.seal(patient_id, identity)
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT 1 FROM teams WHERE team_id = %s", (team_id,))
            if cur.fetchone() is None:
                raise RegistryError(
                    f"no team {team_id!r} (add it with `python -m alerts.admin team add`)", 404
                )
            try:
                cur.execute(
                    "INSERT INTO patients (patient_id, team_id, condition, municipality, enrolled_by) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (patient_id, team_id, condition.value, municipality, actor.username),
                )
            except errors.UniqueViolation:
                raise RegistryError(f"patient {patient_id} is already enrolled", 409) from None
            try:
                cur.execute(
                    "INSERT INTO patient_identities (patient_id, sealed, key_id, nin_digest) VALUES (%s, "
                    "%s, %s, %s)",
                    (patient_id, sealed, key_id, sealer.digest(national_id) if national_id else None),
                )
            except errors.UniqueViolation:
                raise RegistryError(
                    "a patient with this national identity number is already enrolled; find them in the "
                    "console",
                    409,
                ) from None
            self._insert_plan(cur, plan)
            self._audit(
                cur,
                actor,
                "registry.enrol",
                target=patient_id,
                patient_id=patient_id,
                detail={"team": team_id, "condition": condition.value},
            )
        self._publish(conn, [plan])
        return plan

    def identity(self, conn: psycopg.Connection[Any], actor: Actor, patient_id: str) -> Identity | None:
        """The person behind a pseudonym (None when not recorded); reading it is audited."""
        sealer = self._require_sealer()
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            self._patient(cur, patient_id, actor)
            cur.execute("SELECT sealed, key_id FROM patient_identities WHERE patient_id = %s", (patient_id,))
            row = cur.fetchone()
            self._audit(cur, actor, "registry.identity.view", target=patient_id, patient_id=patient_id)
        if row is None:
            return None
        try:
            return sealer.open(patient_id, bytes(row["sealed"]), row["key_id"])
        except IdentityError as exc:
            raise RegistryError(str(exc), 500) from None

    # ------------------------------------------------------------ kits
    def kit_add(
        self,
        conn: psycopg.Connection[Any],
        actor: Actor,
        kit_id: str,
        *,
        model: str | None = None,
        devices: Sequence[KitDevice] = (),
    ) -> None:
        """A kit in stock with its devices, and its broker identity (no password until paired)."""
        _check_id(kit_id, "kit id")
        for device in devices:
            _check_id(device.serial, "device serial")
        broker = self._require_broker()
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            try:
                cur.execute("INSERT INTO kits (kit_id, model) VALUES (%s, %s)", (kit_id, model))
            except errors.UniqueViolation:
                raise RegistryError(f"kit {kit_id} already exists", 409) from None
            for device in devices:
                try:
                    cur.execute(
                        "INSERT INTO kit_devices (device_id, kit_id, kind, profile) VALUES (%s, %s, %s, %s)",
                        (device.serial, kit_id, device.kind, device.profile),
                    )
                except errors.UniqueViolation:
                    raise RegistryError(f"device {device.serial} already belongs to a kit", 409) from None
            with broker() as admin:
                admin.provision([(kit_id, None)])
            cur.execute("UPDATE kits SET broker_provisioned_at = now() WHERE kit_id = %s", (kit_id,))
            self._audit(cur, actor, "registry.kit.add", target=kit_id, detail={"devices": len(devices)})

    def kit_assign(
        self,
        conn: psycopg.Connection[Any],
        actor: Actor,
        kit_id: str,
        patient_id: str,
        *,
        at: datetime | None = None,
    ) -> datetime:
        """Hand the kit to the patient from `at` (default now). A kit still with another patient is
        taken back at that moment: readings measured before it stay with the previous patient."""
        at = at or datetime.now(UTC)
        if at.tzinfo is None:
            raise RegistryError("the assignment time needs a time zone offset")
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            kit = self._kit(cur, kit_id)
            if kit["state"] == "retired":
                raise RegistryError(f"kit {kit_id} is retired and cannot be assigned", 409)
            self._patient(cur, patient_id, actor)
            cur.execute(
                "SELECT patient_id, assigned_from, assigned_until FROM kit_assignments WHERE kit_id = %s "
                "ORDER BY assigned_from DESC LIMIT 1",
                (kit_id,),
            )
            last = cur.fetchone()
            if last is not None and last["assigned_until"] is None:
                if last["patient_id"] == patient_id:
                    raise RegistryError(f"kit {kit_id} is already assigned to this patient", 409)
                if at <= last["assigned_from"]:
                    raise RegistryError(
                        f"kit {kit_id} was assigned to another patient from "
                        f"{last['assigned_from']:%Y-%m-%d %H:%M %Z}; "
                        "a new assignment must start after that",
                        409,
                    )
                cur.execute(
                    "UPDATE kit_assignments SET assigned_until = %s WHERE kit_id = %s AND assigned_until "
                    "IS NULL",
                    (at, kit_id),
                )
            try:
                cur.execute(
                    "INSERT INTO kit_assignments (kit_id, patient_id, assigned_from) VALUES (%s, %s, %s)",
                    (kit_id, patient_id, at),
                )
            except (errors.ExclusionViolation, errors.UniqueViolation):
                raise RegistryError(
                    f"kit {kit_id} was with another patient at {at:%Y-%m-%d %H:%M %Z}: assignments may not "
                    "overlap",
                    409,
                ) from None
            cur.execute("UPDATE kits SET state = 'assigned', updated_at = now() WHERE kit_id = %s", (kit_id,))
            self._audit(
                cur,
                actor,
                "registry.kit.assign",
                target=kit_id,
                patient_id=patient_id,
                detail={"from": at.isoformat()},
            )
        return at

    def kit_return(
        self, conn: psycopg.Connection[Any], actor: Actor, kit_id: str, *, at: datetime | None = None
    ) -> None:
        """The kit comes back to stock at `at`; later readings are rejected as unassigned."""
        at = at or datetime.now(UTC)
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            kit = self._kit(cur, kit_id)
            if kit["state"] != "assigned":
                raise RegistryError(f"kit {kit_id} is {kit['state'].replace('_', ' ')}, not assigned", 409)
            self._close_assignment(cur, kit_id, at)
            cur.execute("UPDATE kits SET state = 'in_stock', updated_at = now() WHERE kit_id = %s", (kit_id,))
            self._audit(cur, actor, "registry.kit.return", target=kit_id, detail={"at": at.isoformat()})

    @staticmethod
    def _close_assignment(cur: psycopg.Cursor[Any], kit_id: str, at: datetime) -> None:
        cur.execute(
            "SELECT assigned_from FROM kit_assignments WHERE kit_id = %s AND assigned_until IS NULL",
            (kit_id,),
        )
        row = cur.fetchone()
        if row is None:
            return
        if at <= row["assigned_from"]:
            raise RegistryError(
                f"kit {kit_id} was assigned only from {row['assigned_from']:%Y-%m-%d %H:%M %Z}", 409
            )
        cur.execute(
            "UPDATE kit_assignments SET assigned_until = %s WHERE kit_id = %s AND assigned_until IS NULL",
            (at, kit_id),
        )

    def kit_retire(
        self, conn: psycopg.Connection[Any], actor: Actor, kit_id: str, *, at: datetime | None = None
    ) -> None:
        """Retire the kit for good: its broker identity is deleted (it is disconnected at once), its
        assignment ends, unclaimed pairing codes die, and readings measured from `at` on are rejected."""
        at = at or datetime.now(UTC)
        broker = self._require_broker()
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            kit = self._kit(cur, kit_id)
            if kit["state"] == "retired":
                raise RegistryError(f"kit {kit_id} is already retired", 409)
            self._close_assignment(cur, kit_id, at)
            cur.execute(
                "UPDATE kits SET state = 'retired', retired_at = %s, updated_at = now() WHERE kit_id = %s",
                (at, kit_id),
            )
            cur.execute(
                "UPDATE kit_pairings SET expires_at = now() WHERE kit_id = %s AND claimed_at IS NULL AND "
                "expires_at > now()",
                (kit_id,),
            )
            with broker() as admin:
                admin.revoke([kit_id])
            self._audit(cur, actor, "registry.kit.retire", target=kit_id, detail={"at": at.isoformat()})

    def pair(self, conn: psycopg.Connection[Any], actor: Actor, kit_id: str) -> tuple[str, datetime]:
        """A one-time pairing code for the kit (shown once; only its hash is kept)."""
        raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(12))
        code = "-".join(raw[i : i + 4] for i in range(0, 12, 4))
        expires = datetime.now(UTC) + self.pairing_ttl
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            kit = self._kit(cur, kit_id)
            if kit["state"] == "retired":
                raise RegistryError(f"kit {kit_id} is retired", 409)
            cur.execute(
                "UPDATE kit_pairings SET expires_at = now() WHERE kit_id = %s AND claimed_at IS NULL AND "
                "expires_at > now()",
                (kit_id,),
            )  # one live code per kit
            cur.execute(
                "INSERT INTO kit_pairings (code_hash, kit_id, created_by, expires_at) VALUES (%s, %s, %s, "
                "%s)",
                (_code_hash(code), kit_id, actor.username, expires),
            )
            self._audit(
                cur, actor, "registry.kit.pair", target=kit_id, detail={"expires": expires.isoformat()}
            )
        return code, expires

    def claim(self, conn: psycopg.Connection[Any], code: str, *, ip: str | None = None) -> Credentials:
        """Exchange a pairing code for the kit's credentials, once. The password is new on every claim."""
        broker = self._require_broker()
        password = new_password()
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "UPDATE kit_pairings SET claimed_at = now(), claimed_ip = %s WHERE code_hash = %s "
                "AND claimed_at IS NULL AND expires_at > now() RETURNING kit_id",
                (ip, _code_hash(code)),
            )
            row = cur.fetchone()
            if row is None:
                raise RegistryError(
                    "this pairing code is unknown, used or expired: ask the response centre for a new one",
                    404,
                )
            kit_id = row["kit_id"]
            kit = self._kit(cur, kit_id)
            if kit["state"] == "retired":
                raise RegistryError("this kit is retired", 409)
            with broker() as admin:
                admin.provision([(kit_id, password)])
            cur.execute(
                "UPDATE kits SET credentials_issued_at = now(), broker_provisioned_at = "
                "coalesce(broker_provisioned_at, now()) "
                "WHERE kit_id = %s",
                (kit_id,),
            )
            self._audit(cur, Actor(f"kit:{kit_id}", ip), "registry.kit.claim", target=kit_id)
        host, port = self.broker_address
        return Credentials(kit_id, kit_id, password, host, port, self.topic_root)

    def issue_credentials(
        self,
        conn: psycopg.Connection[Any],
        actor: Actor,
        kit_ids: Sequence[str],
        *,
        offline: Callable[[list[tuple[str, str]]], int] | None = None,
    ) -> list[Credentials]:
        """New credentials for many kits at once (factory provisioning, load tests), without pairing.

        `offline` writes them into a stopped broker's plugin file (see `broker.write_offline`);
        otherwise they go over $CONTROL to the running broker.
        """
        issued = [(kit_id, new_password()) for kit_id in kit_ids]
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT kit_id, state FROM kits WHERE kit_id = ANY(%s)", (list(kit_ids),))
            states = {r["kit_id"]: r["state"] for r in cur.fetchall()}
            missing = [k for k in kit_ids if k not in states]
            retired = [k for k, s in states.items() if s == "retired"]
            if missing or retired:
                raise RegistryError(
                    f"{len(missing)} kits unknown (e.g. {missing[:3]}), {len(retired)} retired (e.g. "
                    f"{retired[:3]})",
                    409,
                )
            if offline is not None:
                offline(issued)
            else:
                with self._require_broker()() as admin:
                    admin.provision(issued)
            cur.execute(
                "UPDATE kits SET credentials_issued_at = now(), broker_provisioned_at = now() WHERE kit_id "
                "= ANY(%s)",
                (list(kit_ids),),
            )
            self._audit(
                cur,
                actor,
                "registry.kit.credentials",
                detail={"kits": len(kit_ids), "offline": offline is not None},
            )
        host, port = self.broker_address
        return [Credentials(k, k, p, host, port, self.topic_root) for k, p in issued]

    # ------------------------------------------------------------ care plans
    @staticmethod
    def _insert_plan(cur: psycopg.Cursor[Any], plan: CarePlan) -> None:
        cur.execute(
            "INSERT INTO care_plans (patient_id, version, document, changed_at, changed_by, reason) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (
                plan.patient_id,
                plan.version,
                Jsonb(msgspec.to_builtins(plan)),
                plan.changed_at,
                plan.changed_by,
                plan.reason,
            ),
        )

    @staticmethod
    def _plans(cur: psycopg.Cursor[Any], patient_id: str) -> list[tuple[CarePlan, datetime | None]]:
        cur.execute(
            "SELECT document, published_at FROM care_plans WHERE patient_id = %s ORDER BY version DESC",
            (patient_id,),
        )
        return [(msgspec.convert(r["document"], CarePlan), r["published_at"]) for r in cur.fetchall()]

    def careplan(
        self, conn: psycopg.Connection[Any], actor: Actor, patient_id: str
    ) -> list[tuple[CarePlan, datetime | None]]:
        """Every version, newest first, with when each was published (None: not yet)."""
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            self._patient(cur, patient_id, actor)
            plans = self._plans(cur, patient_id)
            self._audit(cur, actor, "registry.careplan.view", target=patient_id, patient_id=patient_id)
        return plans

    def careplan_set(
        self, conn: psycopg.Connection[Any], actor: Actor, patient_id: str, change: PlanChange
    ) -> CarePlan:
        """The next version with `change` applied, stored and published."""
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            patient = self._patient(cur, patient_id, actor)
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('care_plans:' || %s))", (patient_id,))
            plans = self._plans(cur, patient_id)
            if plans:
                current = plans[0][0]
            else:
                condition = Condition(patient["condition"] or change.condition or Condition.HEART_FAILURE)
                current = default_plan(
                    patient_id, patient["team_id"], condition, by=actor.username, at=datetime.now(UTC)
                )
                current = msgspec.structs.replace(current, version=0)
            if change.team_id is not None and actor.team_id is not None and change.team_id != actor.team_id:
                raise RegistryError(f"you may move patients within team {actor.team_id} only", 403)
            try:
                plan = apply_change(
                    current, change, by=actor.username, at=datetime.now(UTC), known_rules=RULE_IDS
                )
            except ValueError as exc:
                raise RegistryError(str(exc)) from None
            self._insert_plan(cur, plan)
            if change.condition is not None or change.team_id is not None:
                cur.execute(
                    "UPDATE patients SET condition = %s, team_id = %s WHERE patient_id = %s",
                    (plan.condition.value, plan.team_id, patient_id),
                )
            self._audit(
                cur,
                actor,
                "registry.careplan.set",
                target=f"{patient_id}@{plan.version}",
                patient_id=patient_id,
                detail={"version": plan.version, "reason": plan.reason},
            )
        self._publish(conn, [plan])
        return plan

    def careplan_propose(
        self, conn: psycopg.Connection[Any], actor: Actor, patient_id: str, *, now: datetime | None = None
    ) -> Proposal:
        """Personal thresholds from the patient's last 14 days in the archive (nothing is changed)."""
        now = now or datetime.now(UTC)
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            self._patient(cur, patient_id, actor)
            cur.execute(
                "SELECT metric, measured_at, value FROM measurements WHERE patient_id = %s "
                "AND measured_at > %s AND measured_at <= %s AND value IS NOT NULL ORDER BY measured_at",
                (patient_id, now - timedelta(days=14), now),
            )
            series: dict[Metric, list[tuple[datetime, float]]] = {}
            for row in cur.fetchall():
                try:
                    series.setdefault(Metric(row["metric"]), []).append((row["measured_at"], row["value"]))
                except ValueError:
                    continue
            self._audit(cur, actor, "registry.careplan.propose", target=patient_id, patient_id=patient_id)
        return propose(series)

    def _publish(self, conn: psycopg.Connection[Any], plans: Sequence[CarePlan]) -> None:
        if self.publisher is None or not plans:
            return
        try:
            self.publisher.publish(plans)
        except Exception as exc:
            raise RegistryError(
                f"care plan version {plans[-1].version} is saved but not yet published ({exc}); it goes "
                "out with "
                "the next change, or run `python -m registry careplan publish`",
                503,
            ) from None
        with conn.transaction(), conn.cursor() as cur:
            for plan in plans:
                cur.execute(
                    "UPDATE care_plans SET published_at = now() WHERE patient_id = %s AND version = %s",
                    (plan.patient_id, plan.version),
                )

    def publish_pending(self, conn: psycopg.Connection[Any], *, limit: int = 10_000) -> int:
        """Publish every stored version Kafka has not acknowledged yet, oldest first."""
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT document FROM care_plans WHERE published_at IS NULL ORDER BY changed_at, version "
                "LIMIT %s",
                (limit,),
            )
            plans = [msgspec.convert(r["document"], CarePlan) for r in cur.fetchall()]
        self._publish(conn, plans)
        return len(plans)
