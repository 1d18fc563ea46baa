"""A stateful property test of the alert lifecycle against the real store (issue #27, build item 7).

Hypothesis interleaves nurses' actions (claim, start, resolve, unclaim, reassign, handover,
acknowledge) with the monitor's versions of a few episodes (open, update, worsen, resolve, reopen),
delivered in order, out of order, in shuffled batches or again (Kafka redelivers), and escalation
ticks on a clock the test controls. After every step it checks what docs/alert-lifecycle.md
promises:

- an episode that needs action (its newest version is active and arrived after the last thing a
  person did to it) is in a queue: new, or claimed by a nurse, and escalating;
- `new` always means the monitor sees the condition, `to_acknowledge` that it cleared;
- each escalation step fires once per alarm round, in order, and a tick takes exactly the steps due;
- every version delivered is in the timeline exactly once, none that was not, and the alert holds
  the newest one.

The clock starts in 2100, so services other tests run on the real clock never find these alerts
due. `VAKTROM_LIFECYCLE_EXAMPLES` lengthens the run (30 examples by default, to keep `make test`
fast).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from alerts.accounts import Role
from alerts.handoff import handover, reassign, unclaim
from alerts.store import Resolution, WorkflowError, acknowledge, apply_events, claim, complete, start
from alerts.workers.escalation import Targets, escalate_due
from contracts import AlertEvent, EpisodeChange, Severity
from tests.integration.alerts_support import T0, event, new_id, staff

TARGETS = Targets(red=timedelta(minutes=5), yellow=timedelta(hours=2))
START = datetime(2100, 1, 1, tzinfo=UTC)
RANK = {Severity.INFO: 0, Severity.YELLOW: 1, Severity.RED: 2}
MONITOR_KINDS = ("opened", "updated", "escalated", "resolved")
EXAMPLES = int(os.environ.get("VAKTROM_LIFECYCLE_EXAMPLES", "30"))


@dataclass
class Episode:
    """What the test knows of one episode: the versions the monitor produced and which arrived."""

    eid: str
    severity: Severity
    active: bool = True
    versions: list[AlertEvent] = field(default_factory=list)
    delivered: set[int] = field(default_factory=set)
    newest_at: int = 0  # the step at which the newest held version arrived
    human_at: int = -1  # the step of the last action a person took on it

    def __repr__(self) -> str:  # short, for Hypothesis's report of a failing sequence
        changes = ",".join(f"v{e.version}:{e.change.value}/{e.severity.value}" for e in self.versions)
        return f"Episode({self.eid[:8]}, [{changes}], delivered={sorted(self.delivered)})"


@dataclass(frozen=True)
class Ward:
    patient: str
    nurses: tuple[str, ...]
    coordinator: str


class Lifecycle(RuleBasedStateMachine):
    conn: psycopg.Connection[Any]
    ward: Ward

    def __init__(self) -> None:
        super().__init__()
        self.episodes: list[Episode] = []
        self.clock = START
        self.step = 0

    # -------------------------------------------------------------- the monitor

    @precondition(lambda self: len(self.episodes) < 3)
    @rule(severity=st.sampled_from(list(Severity)))
    def open_episode(self, severity: Severity) -> None:
        ep = Episode(new_id(), severity)
        self.episodes.append(ep)
        self._produce(ep, EpisodeChange.OPENED, severity)

    @precondition(lambda self: any(e.active for e in self.episodes))
    @rule(data=st.data())
    def update(self, data: st.DataObject) -> None:
        ep = data.draw(st.sampled_from([e for e in self.episodes if e.active]))
        self._produce(ep, EpisodeChange.UPDATED, ep.severity)

    @precondition(lambda self: any(e.active and e.severity is not Severity.RED for e in self.episodes))
    @rule(data=st.data())
    def worsen(self, data: st.DataObject) -> None:
        ep = data.draw(
            st.sampled_from([e for e in self.episodes if e.active and e.severity is not Severity.RED])
        )
        worse = data.draw(st.sampled_from([s for s in Severity if RANK[s] > RANK[ep.severity]]))
        ep.severity = worse
        self._produce(ep, EpisodeChange.ESCALATED, worse)

    @precondition(lambda self: any(e.active for e in self.episodes))
    @rule(data=st.data())
    def resolve(self, data: st.DataObject) -> None:
        ep = data.draw(st.sampled_from([e for e in self.episodes if e.active]))
        ep.active = False
        self._produce(ep, EpisodeChange.RESOLVED, ep.severity)

    @precondition(lambda self: any(not e.active for e in self.episodes))
    @rule(data=st.data())
    def reopen(self, data: st.DataObject) -> None:
        """The condition recurs in the same episode (a newer active version after a resolved one)."""
        ep = data.draw(st.sampled_from([e for e in self.episodes if not e.active]))
        ep.active = True
        self._produce(ep, EpisodeChange.UPDATED, ep.severity)

    def _produce(self, ep: Episode, change: EpisodeChange, severity: Severity) -> None:
        version = len(ep.versions) + 1
        resolved = {"resolved_at": T0 + timedelta(hours=version)} if not ep.active else {}
        ep.versions.append(event(ep.eid, version, change, severity, patient_id=self.ward.patient, **resolved))

    @precondition(lambda self: any(len(e.delivered) < len(e.versions) for e in self.episodes))
    @rule(data=st.data())
    def deliver_next(self, data: st.DataObject) -> None:
        """The oldest version not delivered yet (Kafka in order)."""
        ep = data.draw(st.sampled_from([e for e in self.episodes if len(e.delivered) < len(e.versions)]))
        self._deliver([(ep, min(set(range(1, len(ep.versions) + 1)) - ep.delivered))])

    @precondition(lambda self: any(e.versions for e in self.episodes))
    @rule(data=st.data())
    def deliver_any(self, data: st.DataObject) -> None:
        """Any versions, several in one batch in any order, delivered already or not (redelivery,
        out of order)."""
        picks = data.draw(
            st.lists(
                st.sampled_from([(e, v) for e in self.episodes for v in range(1, len(e.versions) + 1)]),
                min_size=1,
                max_size=4,
            )
        )
        self._deliver(picks)

    def _deliver(self, picks: list[tuple[Episode, int]]) -> None:
        self.step += 1
        for ep, version in picks:
            if version > max(ep.delivered, default=0):
                ep.newest_at = self.step  # a newer version arrived now
            ep.delivered.add(version)
        apply_events(self.conn, [ep.versions[v - 1] for ep, v in picks], now=self.clock)
        self.conn.commit()

    # -------------------------------------------------------------- people

    def _act(self, ep: Episode, action: Any, expected: set[str]) -> None:
        """Run a nurse's action: done, it moved the alert to `expected`; refused, it changed nothing."""
        before = self._row(ep)
        try:
            action()
        except WorkflowError:
            assert self._row(ep) == before, "a refused action changed the alert"
            return
        self.step += 1
        ep.human_at = self.step
        assert self._row(ep)["state"] in expected

    def _pick(self, data: st.DataObject) -> Episode:
        return data.draw(st.sampled_from([e for e in self.episodes if e.delivered]))

    def _nurse(self, data: st.DataObject, ep: Episode) -> int:
        """Mostly the nurse who holds the alert (so actions get done), sometimes the other one (so
        refusals are tried too)."""
        holder = self._row(ep)["assignee"]
        if holder in self.ward.nurses and data.draw(st.integers(0, 3)) > 0:
            return self.ward.nurses.index(holder)
        return data.draw(st.integers(0, 1))

    @precondition(lambda self: any(e.delivered for e in self.episodes))
    @rule(data=st.data(), nurse=st.integers(0, 1))
    def nurse_claims(self, data: st.DataObject, nurse: int) -> None:
        ep = self._pick(data)
        self._act(ep, lambda: claim(self.conn, ep.eid, self.ward.nurses[nurse]), {"claimed"})

    @precondition(lambda self: any(e.delivered for e in self.episodes))
    @rule(data=st.data())
    def nurse_starts(self, data: st.DataObject) -> None:
        ep = self._pick(data)
        nurse = self._nurse(data, ep)
        self._act(ep, lambda: start(self.conn, ep.eid, self.ward.nurses[nurse]), {"in_progress"})

    @precondition(lambda self: any(e.delivered for e in self.episodes))
    @rule(data=st.data())
    def nurse_resolves(self, data: st.DataObject) -> None:
        ep = self._pick(data)
        nurse = self._nurse(data, ep)
        self._act(
            ep,
            lambda: complete(self.conn, ep.eid, self.ward.nurses[nurse], Resolution.CONTACTED_NO_ACTION),
            {"resolved"},
        )

    @precondition(lambda self: any(e.delivered for e in self.episodes))
    @rule(data=st.data(), coordinator=st.booleans())
    def unclaims(self, data: st.DataObject, coordinator: bool) -> None:
        """A nurse (mostly the holder) or the coordinator gives an alert back to the queue."""
        ep = self._pick(data)
        who = 2 if coordinator else self._nurse(data, ep)
        user = (*self.ward.nurses, self.ward.coordinator)[who]
        self._act(
            ep,
            lambda: unclaim(self.conn, ep.eid, user, manager=who == 2, now=self.clock),
            {"new", "to_acknowledge"},
        )

    @precondition(lambda self: any(e.delivered for e in self.episodes))
    @rule(data=st.data())
    def reassigns(self, data: st.DataObject) -> None:
        ep = self._pick(data)
        nurse = self._nurse(data, ep)
        me, other = self.ward.nurses[nurse], self.ward.nurses[1 - nurse]
        self._act(ep, lambda: reassign(self.conn, ep.eid, me, other, now=self.clock), {"claimed"})

    @rule(nurse=st.integers(0, 1), to_queue=st.booleans())
    def hands_over(self, nurse: int, to_queue: bool) -> None:
        me = self.ward.nurses[nurse]
        to = None if to_queue else self.ward.nurses[1 - nurse]
        moved = set(handover(self.conn, me, to, now=self.clock))
        self.step += 1
        for ep in self.episodes:
            if ep.eid in moved:
                ep.human_at = self.step
                assert self._row(ep)["assignee"] == to

    @precondition(lambda self: any(e.delivered for e in self.episodes))
    @rule(data=st.data(), nurse=st.integers(0, 1))
    def acknowledges(self, data: st.DataObject, nurse: int) -> None:
        ep = self._pick(data)
        self._act(ep, lambda: acknowledge(self.conn, ep.eid, self.ward.nurses[nurse]), {"acknowledged"})

    # -------------------------------------------------------------- the clock

    @rule(minutes=st.integers(1, 200))
    def tick(self, minutes: int) -> None:
        """Time passes and escalation runs: exactly the steps due by then are taken, one per alert."""
        self.clock += timedelta(minutes=minutes)
        before = {ep.eid: self._row(ep) for ep in self.episodes if ep.delivered}
        taken = escalate_due(self.conn, now=self.clock, targets=TARGETS, limit=100_000)
        due = {eid for eid, row in before.items() if _due(row, self.clock)}
        assert {e.episode_id for e in taken} & set(before) == due
        for eid, row in before.items():
            after = self._row(next(ep for ep in self.episodes if ep.eid == eid))
            assert after["step"] == row["step"] + (eid in due)

    # -------------------------------------------------------------- what must always hold

    @invariant()
    def an_episode_that_needs_action_is_in_a_queue(self) -> None:
        for ep in self.episodes:
            if not ep.delivered:
                continue
            row = self._row(ep)
            newest = ep.versions[max(ep.delivered) - 1]
            active = newest.change is not EpisodeChange.RESOLVED and newest.resolved_at is None
            if active and ep.newest_at > ep.human_at:
                assert row["state"] in {"new", "claimed"}, (ep, row)
            if row["state"] == "new":
                assert active, ("new while the monitor has resolved it", row)
            if row["state"] == "to_acknowledge":
                assert not active, ("to acknowledge while the monitor sees it", row)

    @invariant()
    def each_version_is_in_the_timeline_once_and_the_newest_is_held(self) -> None:
        for ep in self.episodes:
            if not ep.delivered:
                continue
            versions = self.conn.execute(
                "SELECT version FROM alert_timeline WHERE episode_id = %s AND kind = ANY(%s) "
                "ORDER BY version",
                (ep.eid, list(MONITOR_KINDS)),
            ).fetchall()
            self.conn.rollback()
            assert [v for (v,) in versions] == sorted(ep.delivered)
            assert self._row(ep)["version"] == max(ep.delivered)

    @invariant()
    def each_escalation_step_fires_once_per_round_in_order(self) -> None:
        for ep in self.episodes:
            if not ep.delivered:
                continue
            rows = self.conn.execute(
                "SELECT (detail->>'round')::int, (detail->>'step')::int FROM alert_timeline "
                "WHERE episode_id = %s AND kind = 'escalation' ORDER BY entry_id",
                (ep.eid,),
            ).fetchall()
            self.conn.rollback()
            by_round: dict[int, list[int]] = {}
            for round_, step in rows:
                by_round.setdefault(round_, []).append(step)
            for steps in by_round.values():
                assert steps == list(range(1, len(steps) + 1)), by_round
            row = self._row(ep)
            assert row["step"] == len(by_round.get(row["round"], [])), (row, by_round)

    def _row(self, ep: Episode) -> dict[str, Any]:
        found = self.conn.execute(
            "SELECT version, state, assignee, severity, escalation_step, alarm_round, "
            "coalesce(rearmed_at, received_at), episode_resolved_at IS NOT NULL "
            "FROM alerts WHERE episode_id = %s",
            (ep.eid,),
        ).fetchone()
        self.conn.rollback()
        assert found is not None
        names = ("version", "state", "assignee", "severity", "step", "round", "clock", "cleared")
        return dict(zip(names, found, strict=True))

    def teardown(self) -> None:
        # Leave nothing open for the next example's (or another test's) escalation runs.
        self.conn.execute(
            "UPDATE alerts SET state = 'closed', closed_at = now(), assignee = NULL, resolution = NULL "
            "WHERE episode_id = ANY(%s) AND state IN ('new', 'claimed', 'in_progress', 'to_acknowledge')",
            ([ep.eid for ep in self.episodes],),
        )
        self.conn.commit()


def _due(row: dict[str, Any], now: datetime) -> bool:
    """The escalation rule of docs/alert-lifecycle.md, restated: new or only claimed, the monitor
    still sees it, a target for its severity, a step left, and the next step's time reached."""
    target = {"red": TARGETS.red, "yellow": TARGETS.yellow}.get(row["severity"])
    return (
        row["state"] in {"new", "claimed"}
        and not row["cleared"]
        and target is not None
        and row["step"] < 3
        and row["clock"] + (row["step"] + 1) * target <= now
    )


def test_the_alert_lifecycle_keeps_its_promises(database_url: str, unique: str) -> None:
    """Any interleaving of nurses' actions, monitor versions (replayed, out of order) and escalation
    ticks keeps every episode that needs action in a queue, takes each escalation step once per
    round, and applies every version exactly once."""
    with psycopg.connect(database_url) as conn:
        team = f"{unique[:20]}-t"
        conn.execute("INSERT INTO teams (team_id, name) VALUES (%s, %s)", (team, team))
        patient = f"P-{unique[:30]}"
        conn.execute("INSERT INTO patients (patient_id, team_id) VALUES (%s, %s)", (patient, team))
        conn.commit()
        Lifecycle.conn = conn
        Lifecycle.ward = Ward(
            patient=patient,
            nurses=(staff(conn, Role.NURSE, team), staff(conn, Role.NURSE, team)),
            coordinator=staff(conn, Role.COORDINATOR, team),
        )
        run_state_machine_as_test(
            Lifecycle,
            settings=settings(
                max_examples=EXAMPLES,
                stateful_step_count=50,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
                database=None,
            ),
        )


def test_the_escalation_rule_restated_matches_a_plain_case() -> None:
    """The test's own restatement of the escalation rule: a red alert new for 5 minutes is due, one
    claimed too, one started or cleared is not."""
    row = {"state": "new", "cleared": False, "severity": "red", "step": 0, "clock": START}
    assert _due(row, START + timedelta(minutes=5))
    assert not _due(row, START + timedelta(minutes=4, seconds=59))
    assert _due({**row, "state": "claimed"}, START + timedelta(minutes=5))
    assert not _due({**row, "state": "in_progress"}, START + timedelta(minutes=5))
    assert not _due({**row, "cleared": True}, START + timedelta(minutes=5))
