# ruff: noqa: F811  (the fixtures are imported from test_ehr_outbox)
"""The EHR outbox against PostgreSQL in awkward moments (regression tests of the outbox's review):
a resolution rolled back, two workers at once, a crash after the EHR accepted, an answer PostgreSQL
cannot store as it came."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from alerts import store
from alerts.store import Resolution
from alerts.workers.ehr_outbox import Answer, deliver_due
from tests.conftest import Stack
from tests.integration.test_ehr_outbox import (  # noqa: F401 (fixtures)
    Teams,
    claimed_alert,
    conn,
    key_file,
    recorder,
    resolve,
    teams,
)

LEASE = timedelta(minutes=2, seconds=1)  # deliver_due's default lease, and a second


def _rows(conn: psycopg.Connection[Any], eid: str) -> list[Any]:
    rows = conn.execute(
        "SELECT delivered_at, attempts FROM ehr_outbox WHERE episode_id = %s", (eid,)
    ).fetchall()
    conn.rollback()
    return rows


def test_a_resolution_that_rolls_back_leaves_no_document(
    stack: Stack, conn: psycopg.Connection[Any], teams: Teams, key_file: Path
) -> None:
    eid = claimed_alert(conn, stack, teams.a, teams.nurse_a)
    record = recorder(key_file)

    def then(cur: psycopg.Cursor[Any], at: Any) -> object:
        record.queue(cur, episode_id=eid, user=teams.nurse_a, resolution="medication_adjusted", note="x",
                     resolved_at=at)  # fmt: skip
        raise RuntimeError("boom after queueing")

    with pytest.raises(RuntimeError):
        store.complete(conn, eid, teams.nurse_a, Resolution.MEDICATION_ADJUSTED, "x", then=then)
    assert _rows(conn, eid) == []
    state = conn.execute("SELECT state FROM alerts WHERE episode_id = %s", (eid,)).fetchone()
    conn.rollback()
    assert state is not None
    assert state[0] != "resolved"


def test_two_workers_at_once_never_send_the_same_row(
    stack: Stack, conn: psycopg.Connection[Any], teams: Teams, key_file: Path, database_url: str
) -> None:
    eid = claimed_alert(conn, stack, teams.a, teams.nurse_a)
    at = resolve(conn, eid, teams.nurse_a, recorder(key_file))
    sent: list[str] = []

    with psycopg.connect(database_url) as other:

        class Second:
            def post(self, body: bytes, headers: dict[str, str]) -> Answer:
                sent.append("second:" + headers["Idempotency-Key"])
                return Answer(201)

        class First:
            def post(self, body: bytes, headers: dict[str, str]) -> Answer:
                sent.append("first:" + headers["Idempotency-Key"])
                # the other service's round runs while this one is mid-POST
                assert deliver_due(other, Second(), now=at + timedelta(seconds=1)).delivered == 0
                return Answer(201)

        assert deliver_due(conn, First(), now=at).delivered == 1
    assert [s.split(":")[0] for s in sent] == ["first"]
    assert _rows(conn, eid)[0][0] is not None


def test_a_crash_after_the_ehr_accepted_resends_the_same_document(
    stack: Stack, conn: psycopg.Connection[Any], teams: Teams, key_file: Path
) -> None:
    eid = claimed_alert(conn, stack, teams.a, teams.nurse_a)
    at = resolve(conn, eid, teams.nurse_a, recorder(key_file))
    got: list[tuple[str, bytes]] = []

    class Accepts:
        def __init__(self, crash: bool) -> None:
            self.crash = crash

        def post(self, body: bytes, headers: dict[str, str]) -> Answer:
            got.append((headers["Idempotency-Key"], body))
            if self.crash:
                raise SystemExit("killed after the EHR accepted")
            return Answer(201)

    with pytest.raises(SystemExit):
        deliver_due(conn, Accepts(crash=True), now=at)
    conn.rollback()
    assert _rows(conn, eid)[0][0] is None
    assert deliver_due(conn, Accepts(crash=False), now=at).delivered == 0  # claimed: its lease runs
    assert deliver_due(conn, Accepts(crash=False), now=at + LEASE).delivered == 1
    assert len(got) == 2
    assert got[0] == got[1]  # same key, same bytes


def test_an_answer_with_a_nul_byte_is_recorded_not_resent_forever(
    stack: Stack, conn: psycopg.Connection[Any], teams: Teams, key_file: Path
) -> None:
    """A broken endpoint answers 400 with a binary body (a NUL in its first 200 characters), which
    PostgreSQL's text and JSONB refuse: the reason is stored cleaned, the attempt counted and the
    document given up, not POSTed again every round forever."""
    eid = claimed_alert(conn, stack, teams.a, teams.nurse_a)
    at = resolve(conn, eid, teams.nurse_a, recorder(key_file))
    posts: list[str] = []

    class Binary:
        def post(self, body: bytes, headers: dict[str, str]) -> Answer:
            posts.append(headers["Idempotency-Key"])
            return Answer(400, "\x00\x01garbage")  # what EhrEndpoint keeps of a binary body

    for _ in range(2):
        try:
            deliver_due(conn, Binary(), now=at)
        except psycopg.Error:
            conn.rollback()
    assert len(posts) == 1, f"the document was POSTed {len(posts)} times"
    assert _rows(conn, eid)[0][1] == 1
