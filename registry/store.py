"""The registry's operations: patients (enrol, identity, list) and care plans, with the kit
operations of `registry.kits`.

Changes outside the database (the broker's kit identities, the care-plan topic) happen after the
checks and are safe to repeat: an unpublished care-plan version is published again by
`publish_pending` (and with the next change).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
from psycopg import errors
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from contracts import RULE_IDS, CarePlan, Condition, Metric
from registry.base import Actor, Credentials, KitDevice, RegistryError, _check_id, new_pseudonym
from registry.careplans import (
    PROPOSED_METRICS,
    PlanChange,
    PlanError,
    Proposal,
    apply_change,
    default_plan,
    propose,
    too_little,
)
from registry.identity import Identity, IdentityError, check_national_id
from registry.kits import KitOperations
from streams.archive import read as archive_read

__all__ = ["Actor", "Credentials", "KitDevice", "Registry", "RegistryError", "proposal_history"]

log = logging.getLogger(__name__)

_TICK = timedelta(microseconds=1)  # PostgreSQL's timestamp resolution


class Registry(KitOperations):
    """Operations over one connection at a time (callers pass it; autocommit or idle)."""

    def team_add(
        self,
        conn: psycopg.Connection[Any],
        actor: Actor,
        team_id: str,
        name: str,
        municipalities: Sequence[str] = (),
    ) -> None:
        """A team of the response centre and the municipalities it serves (added to, never removed here).
        Teams are centre-wide: a team-bound actor may not add or rename one."""
        if actor.team_id is not None:
            raise RegistryError("teams are centre-wide: add or rename them without a team scope", 403)
        with conn.transaction(), conn.cursor() as cur:
            try:
                cur.execute(
                    "INSERT INTO teams (team_id, name, municipalities) VALUES (%s, %s, %s) "
                    "ON CONFLICT (team_id) DO UPDATE SET name = excluded.name, municipalities = "
                    "(SELECT array_agg(DISTINCT m) "
                    "FROM unnest(teams.municipalities || excluded.municipalities) m)",
                    (team_id, name, list(municipalities)),
                )
            except errors.CheckViolation:
                raise RegistryError(f"team id {team_id!r} must be lowercase letters, digits and -") from None
            self._audit(
                cur,
                actor,
                "registry.team.add",
                target=team_id,
                detail={"municipalities": list(municipalities)},
            )

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
        language: str | None = None,
    ) -> CarePlan:
        """A new patient: a pseudonym, a sealed identity, care plan version 1 (the condition's
        defaults, the kit's texts in `language`: nb or en, bokmål when None)."""
        sealer = self._require_sealer()
        if not identity.name.strip():
            raise RegistryError("the patient's name is required")
        if not actor.reaches(team_id):
            mine = f"team {actor.team_id}" if actor.team_id else "a team you act for (--as-team TEAM)"
            raise RegistryError(f"you may enrol patients of {mine} only", 403)
        try:
            national_id = check_national_id(identity.national_id) if identity.national_id else None
        except IdentityError as exc:
            raise RegistryError(str(exc)) from None
        identity = Identity(
            name=identity.name.strip(), birth_date=identity.birth_date, national_id=national_id
        )
        patient_id = _check_id(patient_id, "patient id") if patient_id else new_pseudonym()
        try:
            plan = default_plan(
                patient_id, team_id, condition, by=actor.username, at=datetime.now(UTC), timezone=timezone,
                language=language,
            )  # fmt: skip
        except PlanError as exc:
            raise RegistryError(str(exc)) from None
        sealed, key_id = sealer.seal(patient_id, identity)
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute("SELECT 1 FROM teams WHERE team_id = %s", (team_id,))
            if cur.fetchone() is None:
                raise RegistryError(f"no team {team_id!r} (add it with `python -m registry team add`)", 404)
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
                detail={"team": team_id},  # no condition: administrators read the log
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

    def open_names(self, rows: list[dict[str, Any]], *, into: str = "name") -> list[dict[str, Any]]:
        """Replace each row's `sealed` and `key_id` by the patient's name in `into` (None without a
        key or an identity, or when it does not open). The sealed bytes never leave this method."""
        for row in rows:
            sealed, key_id = row.pop("sealed", None), row.pop("key_id", None)
            row[into] = None
            if sealed is not None and self.sealer is not None:
                try:
                    row[into] = self.sealer.open(row["patient_id"], bytes(sealed), key_id).name
                except IdentityError as exc:
                    log.warning("registry: an identity did not open (%s); showing the pseudonym", exc)
        return rows

    def patients(
        self, conn: psycopg.Connection[Any], actor: Actor, *, limit: int = 500
    ) -> list[dict[str, Any]]:
        """The patients the actor may see, newest first, with name, current plan version and kits."""
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(
                """
                SELECT p.patient_id, p.team_id, p.condition, p.municipality, p.created_at,
                       pi.sealed, pi.key_id,
                       (SELECT max(version) FROM care_plans c WHERE c.patient_id = p.patient_id)
                           AS plan_version,
                       (SELECT string_agg(a.kit_id, ', ' ORDER BY a.kit_id) FROM kit_assignments a
                         WHERE a.patient_id = p.patient_id AND a.assigned_until IS NULL) AS kits
                FROM patients p LEFT JOIN patient_identities pi USING (patient_id)
                WHERE p.discharged_at IS NULL
                  AND ((%(team)s::text IS NULL AND %(every)s) OR p.team_id = %(team)s)
                ORDER BY p.created_at DESC LIMIT %(limit)s
                """,
                {"team": actor.team_id, "every": actor.every_team, "limit": limit},
            )
            rows = cur.fetchall()
            self._audit(cur, actor, "registry.patients.view", detail={"rows": len(rows)})
        return self.open_names(rows)

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
            if change.team_id is not None:
                cur.execute("SELECT 1 FROM teams WHERE team_id = %s", (change.team_id,))
                if cur.fetchone() is None:
                    raise RegistryError(
                        f"no team {change.team_id!r}; check its spelling (ids are lowercase)", 404
                    )
            try:
                plan = apply_change(
                    current, change, by=actor.username, at=datetime.now(UTC), known_rules=RULE_IDS
                )
            except ValueError as exc:
                raise RegistryError(str(exc)) from None
            self._insert_plan(cur, plan)
            if change.condition is not None or change.team_id is not None:
                # A move to another team releases the alerts held by someone who does not see that
                # team, in this transaction: the response centre's trigger on `patients` (migration
                # 0015) does it and names this actor in the alerts' timelines.
                cur.execute("SELECT set_config('vaktrom.actor', %s, true)", (actor.username,))
                cur.execute(
                    "UPDATE patients SET condition = %s, team_id = %s WHERE patient_id = %s",
                    (plan.condition.value, plan.team_id, patient_id),
                )
            if plan.team_id != patient["team_id"]:
                cur.execute(
                    "SELECT kit_id FROM kit_assignments WHERE patient_id = %s AND assigned_until IS NULL",
                    (patient_id,),
                )
                for held in cur.fetchall():
                    self._forget_foreign_credentials(cur, actor, held["kit_id"], plan.team_id)
            self._audit(
                cur,
                actor,
                "registry.careplan.set",
                target=f"{patient_id}@{plan.version}",
                patient_id=patient_id,
                detail={"version": plan.version},  # the reason is clinical: kept with the version
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
            # The archive's read API, window (now - 14 days, now]: its windows are half-open [start,
            # end), and PostgreSQL keeps microseconds.
            start, end = now - timedelta(days=14) + _TICK, now + _TICK
            series, counted = proposal_history(conn, patient_id, start, end)
            self._audit(cur, actor, "registry.careplan.propose", target=patient_id, patient_id=patient_id)
        return propose(series, counted=counted)

    def careplan_preview(
        self, conn: psycopg.Connection[Any], actor: Actor, patient_id: str, change: PlanChange
    ) -> tuple[CarePlan, CarePlan]:
        """The current plan and the next version `change` would make of it, validated as
        `careplan_set` validates it; nothing is stored or published (the what-if replay's pair)."""
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            self._patient(cur, patient_id, actor)
            plans = self._plans(cur, patient_id)
            self._audit(cur, actor, "registry.careplan.preview", target=patient_id, patient_id=patient_id)
        if not plans:
            raise RegistryError("the patient has no care plan yet: save one first", 409)
        current = plans[0][0]
        try:
            proposed = apply_change(
                current, change, by=actor.username, at=datetime.now(UTC), known_rules=RULE_IDS
            )
        except ValueError as exc:
            raise RegistryError(str(exc)) from None
        return current, proposed

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


def proposal_history(
    conn: psycopg.Connection[Any], patient_id: str, start: datetime, end: datetime
) -> tuple[dict[Metric, list[tuple[datetime, float]]], dict[Metric, tuple[int, int]]]:
    """What a care-plan proposal reads of the archive: each proposed metric's raw values in
    [start, end), or (readings, days) from the daily aggregate when those are too few."""
    series: dict[Metric, list[tuple[datetime, float]]] = {}
    counted: dict[Metric, tuple[int, int]] = {}
    for metric in PROPOSED_METRICS:
        # The daily aggregate (TimescaleDB: a continuous aggregate) says first whether there is
        # history enough; its first day starts at midnight UTC before `start`, so it counts at
        # least the raw rows (a late reading in an already materialised day counts from the next
        # refresh, within the hour). Only then the raw readings: the median and MAD need the values.
        days = archive_read.buckets(conn, patient_id, metric.value, start, end, width="day")
        if too_little(readings := sum(d.readings for d in days), len(days)):
            counted[metric] = (readings, len(days))
            continue
        raw = archive_read.series(conn, patient_id, start, end, metric=metric.value)
        if found := [(r.measured_at, r.value) for r in raw if r.value is not None]:
            series[metric] = found
    return series, counted
