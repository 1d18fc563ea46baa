"""Registry refusals change nothing; care-plan history is immutable; a version Kafka did not take
is kept and published later."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from contracts import Metric, topics
from registry import PlanChange, Registry, RegistryError
from registry.bulk import enrol_cohort
from registry.publish import KafkaPlanPublisher
from tests.conftest import Stack, stack_command
from tests.integration.registry_support import OPERATOR, enrol, make_registry, new_team, registry_for
from tests.integration.stage_support import consume, prepare


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


def _assignments(conn: psycopg.Connection[Any], kit: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT patient_id, assigned_from, assigned_until FROM kit_assignments WHERE kit_id = %s ORDER BY 2",
        (kit,),
    ).fetchall()


def test_an_overlapping_assignment_is_refused_and_changes_nothing(
    stack: Stack, conn: psycopg.Connection[Any], unique: str
) -> None:
    with registry_for(stack, root=f"{unique}/v1") as registry:
        _overlap(registry, conn, unique)


def _overlap(registry: Registry, conn: psycopg.Connection[Any], unique: str) -> None:
    team = new_team(conn, unique[:40])
    a, b = enrol(registry, conn, team, "A"), enrol(registry, conn, team, "B")
    kit, now = f"{unique[:40]}-K", datetime.now(UTC).replace(microsecond=0)
    registry.kit_add(conn, OPERATOR, kit)
    registry.kit_assign(conn, OPERATOR, kit, a, at=now - timedelta(days=10))
    registry.kit_return(conn, OPERATOR, kit, at=now - timedelta(days=5))
    before = _assignments(conn, kit)
    with pytest.raises(RegistryError, match="may not overlap") as refused:
        registry.kit_assign(conn, OPERATOR, kit, b, at=now - timedelta(days=7))  # A had it then
    assert refused.value.status == 409
    assert _assignments(conn, kit) == before
    with pytest.raises(RegistryError, match="no patient") as unknown:
        registry.kit_assign(conn, OPERATOR, kit, "P-NOBODY")
    assert unknown.value.status == 404
    with pytest.raises(RegistryError, match="needs a time zone"):
        registry.kit_assign(conn, OPERATOR, kit, b, at=datetime(2026, 11, 1, 8, 0))  # noqa: DTZ001 - the point
    assert _assignments(conn, kit) == before
    assert conn.execute("SELECT state FROM kits WHERE kit_id = %s", (kit,)).fetchone() == ("in_stock",)


def test_care_plan_versions_cannot_be_rewritten_or_deleted(
    stack: Stack, conn: psycopg.Connection[Any], unique: str
) -> None:
    with registry_for(stack, root=f"{unique}/v1") as registry:
        patient = enrol(registry, conn, new_team(conn, unique[:40]), "C")
    for statement in (
        "UPDATE care_plans SET reason = 'rewritten' WHERE patient_id = %s",
        "DELETE FROM care_plans WHERE patient_id = %s",
    ):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="history"):
            conn.execute(statement, (patient,))
    assert conn.execute("SELECT reason FROM care_plans WHERE patient_id = %s", (patient,)).fetchone() == (
        "enrolled: copd defaults",
    )


def test_a_version_kafka_did_not_take_is_kept_and_published_later(
    stack: Stack, kafka_bootstrap: str, conn: psycopg.Connection[Any], unique: str
) -> None:
    prepare(stack, unique)
    registry = make_registry(stack, root=f"{unique}/v1", prefix=f"{unique}.")
    patient = enrol(registry, conn, new_team(conn, unique[:40]), "D")
    working = registry.publisher
    # Kafka refuses the next version: its topic (another prefix) does not exist and is not auto-created
    registry.publisher = KafkaPlanPublisher(stack.kafka("registry", prefix=f"{unique}-missing."), timeout_s=3)
    change = PlanChange(reason="tighter", thresholds={"T-1": {"cel": 37.8}})
    with pytest.raises(RegistryError, match="saved but not yet published") as refused:
        registry.careplan_set(conn, OPERATOR, patient, change)
    assert refused.value.status == 503
    stored = conn.execute(
        "SELECT version, published_at IS NULL FROM care_plans WHERE patient_id = %s ORDER BY version",
        (patient,),
    ).fetchall()
    assert stored == [(1, False), (2, True)]
    registry.publisher.close()  # type: ignore[union-attr]
    registry.publisher = working
    assert registry.publish_pending(conn) >= 1
    published = consume(stack, topics.careplan_topic(f"{unique}."), until=2, timeout=30)
    assert [v["version"] for _k, v, _h in published] == [1, 2]
    assert conn.execute(
        "SELECT count(*) FROM care_plans WHERE patient_id = %s AND published_at IS NULL", (patient,)
    ).fetchone() == (0,)
    working.close()  # type: ignore[union-attr]


def test_a_version_published_while_kafka_is_away_fails_in_time_and_is_not_sent_behind_the_callers_back(
    stack: Stack, conn: psycopg.Connection[Any], unique: str
) -> None:
    """Kafka stopped: the change is saved, the request fails within the publisher's timeout (not
    hanging), and once Kafka is back the version is not on the topic until the registry publishes
    it again itself; then a new version goes out on the same publisher."""
    prepare(stack, unique)
    registry = make_registry(stack, root=f"{unique}/v1", prefix=f"{unique}.")
    patient = enrol(registry, conn, new_team(conn, unique[:40]), "D")
    working = registry.publisher
    registry.publisher = KafkaPlanPublisher(stack.kafka("registry", prefix=f"{unique}."), timeout_s=5)
    down = stack_command("down", "kafka", timeout=120)
    assert down.returncode == 0, down.stderr
    try:
        started = time.monotonic()
        with pytest.raises(RegistryError, match="saved but not yet published"):
            registry.careplan_set(conn, OPERATOR, patient, PlanChange(reason="while away"))
        assert time.monotonic() - started < 5 + 10, "the request waited past the publisher's timeout"
    finally:
        up = stack_command("up", "kafka", timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr
    time.sleep(5)  # time enough for a record kept in the client to be sent
    published = consume(stack, topics.careplan_topic(f"{unique}."), timeout=30, idle=5)
    assert [v["version"] for _k, v, _h in published] == [1], "version 2 went out behind the caller's back"
    registry.careplan_set(conn, OPERATOR, patient, PlanChange(reason="kafka back"))
    published = consume(stack, topics.careplan_topic(f"{unique}."), until=2, timeout=30)
    assert [v["version"] for _k, v, _h in published] == [1, 3]
    registry.publisher.close()  # type: ignore[union-attr]
    working.close()  # type: ignore[union-attr]


def test_device_profiles_only_narrow_and_teams_gather_municipalities(
    stack: Stack, conn: psycopg.Connection[Any], unique: str
) -> None:
    with registry_for(stack, root=f"{unique}/v1") as registry:
        _profiles_and_teams(registry, conn, unique)


def _profiles_and_teams(registry: Registry, conn: psycopg.Connection[Any], unique: str) -> None:
    profile = f"{unique[:40]}-scale"
    with pytest.raises(RegistryError, match="within 1-500 kg"):
        registry.profile_set(conn, OPERATOR, profile, metric=Metric.BODY_WEIGHT, low=0.5, high=150)
    registry.profile_set(conn, OPERATOR, profile, metric=Metric.BODY_WEIGHT, low=5, high=150)
    row = conn.execute("SELECT low, high FROM device_profiles WHERE profile = %s", (profile,)).fetchone()
    assert row == (5.0, 150.0)
    team = unique[:40]
    registry.team_add(conn, OPERATOR, team, "East", ["Oslo"])
    registry.team_add(conn, OPERATOR, team, "East", ["Nordre Follo", "Oslo"])
    found = conn.execute("SELECT municipalities FROM teams WHERE team_id = %s", (team,)).fetchone()
    assert sorted(found[0]) == ["Nordre Follo", "Oslo"]
    with pytest.raises(RegistryError, match="lowercase"):
        registry.team_add(conn, OPERATOR, "Not A Team", "x")


def test_a_cohort_takes_each_kits_own_plan_and_refuses_an_unknown_condition(
    stack: Stack, conn: psycopg.Connection[Any], unique: str
) -> None:
    """gateway-sim's enrolment names `infection` and carries the kit's schedule and SpO2 scale."""
    rows = [
        {"patient_id": f"{unique[:40]}-p1", "kit": f"{unique[:40]}-k1", "condition": "infection",
         "timezone": "Europe/Oslo", "spo2_scale": 2,
         "expected": [{"metric": "body_temperature", "windows": [{"start": "07:00", "end": "09:00"}]}],
         "devices": [{"serial": f"{unique[:40]}-t1", "kind": "thermometer"}]},
    ]  # fmt: skip
    since = datetime.now(UTC) - timedelta(days=1)
    with registry_for(stack, root=f"{unique}/v1") as registry:
        bad = [{**rows[0], "patient_id": f"{unique[:40]}-p2", "kit": f"{unique[:40]}-k2", "condition": "flu"}]
        with pytest.raises(RegistryError, match="unknown condition 'flu'"):
            enrol_cohort(
                registry, conn, OPERATOR, bad, team_id=unique[:40], since=since, clock=time.monotonic
            )
        assert conn.execute(
            "SELECT count(*) FROM patients WHERE patient_id = %s", (bad[0]["patient_id"],)
        ).fetchone() == (0,)
        enrol_cohort(registry, conn, OPERATOR, rows, team_id=unique[:40], since=since, clock=time.monotonic)
        ((plan, _published),) = registry.careplan(conn, OPERATOR, rows[0]["patient_id"])
    assert plan.condition.value == "infection_watch"
    assert plan.spo2_scale == 2
    assert [(e.metric.value, [(w.start, w.end) for w in e.windows]) for e in plan.expected] == [
        ("body_temperature", [("07:00", "09:00")])
    ]
