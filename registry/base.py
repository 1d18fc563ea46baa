"""What every registry operation shares: errors, the actor, value types and the database helpers.

Each operation runs in one database transaction, checks its input first and changes nothing when
it refuses (`RegistryError`, with `status` for the HTTP API and a message that says what to do).
Every change is written to the audit log with who did it.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import psycopg

from contracts import CarePlan
from contracts.mqtt_accounts import kit_id_problem
from registry.broker import BrokerAdmin
from registry.identity import Sealer
from runtime import audit as audit_log

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")  # fullmatch: `$` would let a final newline by
_CODE_ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"  # no 0/O, 1/I/L, U: read aloud and typed by people


_KIT = "SELECT * FROM kits WHERE kit_id = %s"
_KIT_FOR_UPDATE = _KIT + " FOR UPDATE"
_EXPIRE_CODES = (  # the kit's unclaimed pairing codes die
    "UPDATE kit_pairings SET expires_at = now() "
    "WHERE kit_id = %s AND claimed_at IS NULL AND expires_at > now()"
)


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
    team_id: str | None = None  # a user bound to one team reaches only its patients and kits
    # Without a team: True reaches every team's objects (a centre-wide account); False reaches
    # centre-wide objects only (the command line without --as-team, see docs/access-control.md).
    every_team: bool = True

    def reaches(self, team_id: str | None) -> bool:
        """Whether an object of `team_id` (None: centre-wide) is within the actor's scope."""
        if team_id is None or team_id == self.team_id:
            return True
        return self.team_id is None and self.every_team

    def unknown(self, what: str) -> str:
        """The refusal for an object out of scope: the same words as for one that does not exist."""
        if self.team_id is None and not self.every_team:
            return f"no {what} among the centre-wide objects (a team's objects need --as-team TEAM)"
        return f"no {what}"


@dataclass(frozen=True, slots=True)
class KitDevice:
    serial: str
    kind: str
    profile: str | None = None

    @classmethod
    def parse(cls, raw: str) -> KitDevice:
        """SERIAL:KIND or SERIAL:KIND:PROFILE, as the command line and the console take it."""
        parts = raw.strip().split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise RegistryError(
                f"device {raw!r}: write SERIAL:KIND or SERIAL:KIND:PROFILE, e.g. OX-1:oximeter"
            )
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else None)


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
    if not _ID.fullmatch(value):
        raise RegistryError(
            f"{what} {value!r} must be 1-64 letters, digits or . _ : - (starting with a letter or digit)"
        )
    return value


def _check_kit_id(kit_id: str) -> str:
    """A kit id is also the kit's broker login and client id: it may not be a service account's name
    or in the broker's own namespaces (contracts.mqtt_accounts)."""
    _check_id(kit_id, "kit id")
    problem = kit_id_problem(kit_id)
    if problem is not None:
        raise RegistryError(problem)
    return kit_id


def _code_hash(code: str) -> bytes:
    return hashlib.sha256(code.replace("-", "").replace(" ", "").upper().encode()).digest()


def new_pseudonym() -> str:
    return "P-" + "".join(secrets.choice(_CODE_ALPHABET) for _ in range(12))


class RegistryCore:
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
        audit_log.append(
            cur,
            action,
            actor=actor.username,
            ip=actor.ip,
            target=target,
            patient_id=patient_id,
            detail=detail,
        )

    @staticmethod
    def _patient(cur: psycopg.Cursor[Any], patient_id: str, actor: Actor) -> dict[str, Any]:
        """The patient, when within the actor's scope; another team's answers as one that does not exist."""
        cur.execute("SELECT * FROM patients WHERE patient_id = %s", (patient_id,))
        row = cur.fetchone()
        if row is None or not actor.reaches(row["team_id"]):
            raise RegistryError(actor.unknown(f"patient {patient_id!r} (enrol the patient first)"), 404)
        return dict(row)

    @staticmethod
    def _kit(cur: psycopg.Cursor[Any], kit_id: str, actor: Actor, *, lock: bool = True) -> dict[str, Any]:
        """The kit (locked), when centre-wide stock or of the actor's team; another team's kit answers
        as one that does not exist."""
        _check_kit_id(kit_id)  # a row from before the rule must not reach the broker either
        cur.execute(_KIT_FOR_UPDATE if lock else _KIT, (kit_id,))
        row = cur.fetchone()
        if row is None or not actor.reaches(row["team_id"]):
            raise RegistryError(actor.unknown(f"kit {kit_id!r} (add it with `kit add` first)"), 404)
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
