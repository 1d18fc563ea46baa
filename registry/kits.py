"""Kit operations: add, assign, return, retire, pair, claim, credentials in bulk, and the kit list.

A kit's broker identity is provisioned idempotently, so repeating an operation after a failure
between the broker and the database is safe.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import errors
from psycopg.rows import dict_row

from contracts import METRICS, Metric
from registry.base import (
    _CODE_ALPHABET,
    _EXPIRE_CODES,
    Actor,
    Credentials,
    KitDevice,
    RegistryCore,
    RegistryError,
    _check_id,
    _check_kit_id,
    _code_hash,
)
from registry.broker import BrokerAdminError, new_password

__all__ = ["KitOperations", "expire_codes_made_by"]


def expire_codes_made_by(db: psycopg.Connection[Any] | psycopg.Cursor[Any], username: str) -> int:
    """The unclaimed pairing codes `username` made die now, in the caller's transaction (the response
    centre calls this when it deactivates the account: the person who leaves has seen the codes, and
    a code claimed hands over a kit's broker credentials). Returns how many died."""
    return db.execute(
        "UPDATE kit_pairings SET expires_at = now() "
        "WHERE created_by = %s AND claimed_at IS NULL AND expires_at > now()",
        (username,),
    ).rowcount


class KitOperations(RegistryCore):
    def profile_set(
        self,
        conn: psycopg.Connection[Any],
        actor: Actor,
        profile: str,
        *,
        metric: Metric,
        low: float,
        high: float,
    ) -> None:
        """A device model's measuring range for one metric: the bridge rejects readings outside it.
        It may only narrow the plausibility range of the clinical reference, never widen it."""
        plausible = METRICS[metric].plausible
        if not plausible.low <= low < high <= plausible.high:
            raise RegistryError(
                f"{profile} {metric.value}: {low:g}-{high:g} must lie within "
                f"{plausible.low:g}-{plausible.high:g} {METRICS[metric].unit}, the low end below the high end"
            )
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(
                "INSERT INTO device_profiles (profile, metric, low, high) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (profile, metric) DO UPDATE SET low = excluded.low, high = excluded.high",
                (_check_id(profile, "device profile"), metric.value, low, high),
            )
            self._audit(cur, actor, "registry.profile.set", target=profile,
                        detail={"metric": metric.value, "low": low, "high": high})  # fmt: skip

    def kits(self, conn: psycopg.Connection[Any], actor: Actor, *, limit: int = 500) -> list[dict[str, Any]]:
        """Kits with their state, devices and current patient (by pseudonym); a team-bound actor sees
        the centre-wide stock and the team's kits."""
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                """
                SELECT k.kit_id, k.model, k.state, k.retired_at, k.credentials_issued_at,
                       a.patient_id, a.assigned_from,
                       (SELECT count(*) FROM kit_devices d WHERE d.kit_id = k.kit_id) AS devices
                FROM kits k
                LEFT JOIN kit_assignments a ON a.kit_id = k.kit_id AND a.assigned_until IS NULL
                WHERE k.team_id IS NULL OR k.team_id = %(team)s OR (%(team)s::text IS NULL AND %(every)s)
                ORDER BY k.updated_at DESC LIMIT %(limit)s
                """,
                {"team": actor.team_id, "every": actor.every_team, "limit": limit},
            )
            rows = cur.fetchall()
            self._audit(cur, actor, "registry.kits.view", detail={"rows": len(rows)})
        return rows

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
        _check_kit_id(kit_id)
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
            kit = self._kit(cur, kit_id, actor)
            if kit["state"] == "retired":
                raise RegistryError(f"kit {kit_id} is retired and cannot be assigned", 409)
            patient = self._patient(cur, patient_id, actor)
            self._close_assignment(cur, kit_id, at, handing_to=patient_id)
            # Another team's unclaimed codes die: they must not yield this patient's kit's credentials.
            cur.execute(_EXPIRE_CODES + " AND team_id <> %s", (kit_id, patient["team_id"]))
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
            self._forget_foreign_credentials(cur, actor, kit_id, patient["team_id"])
            self._audit(
                cur,
                actor,
                "registry.kit.assign",
                target=kit_id,
                patient_id=patient_id,
                detail={"from": at.isoformat()},
            )
        return at

    def _forget_foreign_credentials(
        self, cur: psycopg.Cursor[Any], actor: Actor, kit_id: str, team_id: str
    ) -> None:
        """The kit now serves `team_id`: a password another team's pairing code gave out dies (the
        kit is disconnected and logs in no more until this team pairs it), or whoever holds it at
        that team could publish readings as this team's patient. Centre-wide codes and credentials
        (administrators, the command line, factory provisioning) are kept."""
        cur.execute(
            "SELECT team_id FROM kit_pairings WHERE kit_id = %s AND claimed_at IS NOT NULL "
            "ORDER BY claimed_at DESC LIMIT 1",
            (kit_id,),
        )
        last = cur.fetchone()
        if last is None or last["team_id"] in (None, team_id):
            return
        with self._require_broker()() as admin:
            admin.revoke([kit_id])  # deleting the client disconnects it at once
            admin.provision([(kit_id, None)])
        cur.execute("UPDATE kits SET credentials_issued_at = NULL WHERE kit_id = %s", (kit_id,))
        self._audit(cur, actor, "registry.kit.credentials_revoked", target=kit_id,
                    detail={"why": f"issued through a code of another team than {team_id}"})  # fmt: skip

    def kit_return(
        self, conn: psycopg.Connection[Any], actor: Actor, kit_id: str, *, at: datetime | None = None
    ) -> None:
        """The kit comes back to stock at `at`; later readings are rejected as unassigned."""
        at = at or datetime.now(UTC)
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            kit = self._kit(cur, kit_id, actor)
            if kit["state"] != "assigned":
                raise RegistryError(f"kit {kit_id} is {kit['state'].replace('_', ' ')}, not assigned", 409)
            self._close_assignment(cur, kit_id, at)
            cur.execute("UPDATE kits SET state = 'in_stock', updated_at = now() WHERE kit_id = %s", (kit_id,))
            self._audit(cur, actor, "registry.kit.return", target=kit_id, detail={"at": at.isoformat()})

    @staticmethod
    def _close_assignment(
        cur: psycopg.Cursor[Any], kit_id: str, at: datetime, *, handing_to: str | None = None
    ) -> None:
        """End the kit's open assignment at `at` (nothing when it has none), before it is returned,
        retired, or handed to `handing_to`."""
        cur.execute(
            "SELECT patient_id, assigned_from FROM kit_assignments "
            "WHERE kit_id = %s AND assigned_until IS NULL",
            (kit_id,),
        )
        row = cur.fetchone()
        if row is None:
            return
        if row["patient_id"] == handing_to:
            raise RegistryError(f"kit {kit_id} is already assigned to this patient", 409)
        if at <= row["assigned_from"]:
            raise RegistryError(
                f"kit {kit_id} has been with a patient since {row['assigned_from']:%Y-%m-%d %H:%M %Z}; "
                "a change must come after that",
                409,
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
            kit = self._kit(cur, kit_id, actor)
            if kit["state"] == "retired":
                raise RegistryError(f"kit {kit_id} is already retired", 409)
            self._close_assignment(cur, kit_id, at)
            cur.execute(
                "UPDATE kits SET state = 'retired', retired_at = %s, updated_at = now() WHERE kit_id = %s",
                (at, kit_id),
            )
            cur.execute(_EXPIRE_CODES, (kit_id,))
            with broker() as admin:
                admin.revoke([kit_id])
            self._audit(cur, actor, "registry.kit.retire", target=kit_id, detail={"at": at.isoformat()})

    def pair(self, conn: psycopg.Connection[Any], actor: Actor, kit_id: str) -> tuple[str, datetime]:
        """A one-time pairing code for the kit (shown once; only its hash is kept)."""
        raw = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(12))
        code = "-".join(raw[i : i + 4] for i in range(0, 12, 4))
        expires = datetime.now(UTC) + self.pairing_ttl
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            kit = self._kit(cur, kit_id, actor)
            if kit["state"] == "retired":
                raise RegistryError(f"kit {kit_id} is retired", 409)
            cur.execute(_EXPIRE_CODES, (kit_id,))  # one live code per kit
            cur.execute(
                "INSERT INTO kit_pairings (code_hash, kit_id, created_by, expires_at, team_id) "
                "VALUES (%s, %s, %s, %s, %s)",
                (_code_hash(code), kit_id, actor.username, expires, actor.team_id),
            )
            self._audit(
                cur, actor, "registry.kit.pair", target=kit_id, detail={"expires": expires.isoformat()}
            )
        return code, expires

    def claim(self, conn: psycopg.Connection[Any], code: str, *, ip: str | None = None) -> Credentials:
        """Exchange a pairing code for the kit's credentials, once. The password is new on every claim."""
        broker = self._require_broker()
        password = new_password()
        unknown = RegistryError(
            "this pairing code is unknown, used or expired: ask the response centre for a new one", 404
        )
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                "SELECT kit_id FROM kit_pairings WHERE code_hash = %s AND claimed_at IS NULL "
                "AND expires_at > now()",
                (_code_hash(code),),
            )
            row = cur.fetchone()
            if row is None:
                raise unknown
            kit_id = row["kit_id"]
            # The kit first, then its code: the order of assign, retire and pair, which take the kit and
            # then expire its codes (the other order deadlocks with them).
            kit = self._kit(cur, kit_id, Actor(f"kit:{kit_id}"))  # the code stands for the kit, of any team
            cur.execute(
                "UPDATE kit_pairings SET claimed_at = now(), claimed_ip = %s WHERE code_hash = %s "
                "AND claimed_at IS NULL AND expires_at > now() RETURNING team_id",
                (ip, _code_hash(code)),
            )
            made = cur.fetchone()
            # A code made by one team yields nothing once the kit is another team's: its patient may
            # have moved team since, which expires no code.
            teams = {made["team_id"], kit["team_id"]} - {None} if made is not None else set()
            if made is None or len(teams) > 1:
                raise unknown
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
        issued = [(_check_kit_id(kit_id), new_password()) for kit_id in kit_ids]
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT kit_id, state, team_id FROM kits WHERE kit_id = ANY(%s)", (list(kit_ids),))
            states = {r["kit_id"]: r["state"] for r in cur.fetchall() if actor.reaches(r["team_id"])}
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

    def kit_refresh_rights(
        self, conn: psycopg.Connection[Any], actor: Actor, *, only: Sequence[str] = (), batch: int = 200,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[int, int]:  # fmt: skip
        """Give every kit that is not retired (or those of `only`) the broker rights of this release
        (see `BrokerAdmin.refresh_rights`); (kits refreshed, kits the broker did not have)."""
        if actor.team_id is not None:
            raise RegistryError(
                "refreshing the kits' broker rights is centre-wide: run it without --as-team", 403
            )
        broker = self._require_broker()
        kit_ids = [
            r[0]
            for r in conn.execute(
                "SELECT kit_id FROM kits WHERE state <> 'retired' AND (%s OR kit_id = ANY(%s)) "
                "ORDER BY kit_id",
                (not only, list(only)),
            )
        ]
        if len(kit_ids) < len(set(only)):
            unknown = sorted(set(only) - set(kit_ids))
            raise RegistryError(f"no kit (or a retired one) {', '.join(unknown[:5])}", 404)
        refreshed = done = 0
        try:
            with broker() as admin:
                for start in range(0, len(kit_ids), batch):
                    refreshed += admin.refresh_rights(kit_ids[start : start + batch])
                    done = min(start + batch, len(kit_ids))
                    if progress is not None:
                        progress(done, len(kit_ids))
        except BrokerAdminError as exc:
            if done == 0:
                raise  # nothing was changed
            # the earlier batches are changed: say so (and audit it) rather than "nothing was changed"
            detail = {"kits": refreshed, "missing": done - refreshed, "stopped": str(exc)}
            with conn.transaction(), conn.cursor() as cur:
                self._audit(cur, actor, "registry.kit.refresh_rights", detail=detail)
            raise RegistryError(
                f"{exc}; {done} of {len(kit_ids)} kits were refreshed before this (running the command "
                "again is safe: it sets the same rights)",
                502,
            ) from exc
        with conn.transaction(), conn.cursor() as cur:
            self._audit(cur, actor, "registry.kit.refresh_rights",
                        detail={"kits": refreshed, "missing": len(kit_ids) - refreshed})  # fmt: skip
        return refreshed, len(kit_ids) - refreshed
