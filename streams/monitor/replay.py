"""What-if replay: a patient's stored history through the monitor's pure rules under a given plan.

Before a clinician accepts a care-plan change or a threshold proposal, the console replays the
patient's last 30 days (readings and questionnaire answers, as the archive stored them) once with
the current plan and once with the proposed one, and shows which alert episodes each would have
raised. The replay drives the same core as the worker (`Engine` for readings and deadlines,
`Symptoms` for answers and the rules combining them with readings), unchanged, from empty state:
no Kafka, no store, no wall clock. Time is the history's own: the inputs in event time, each
deadline (kit silent, measurement missed, all-clear periods) fired at its own instant, and the
remaining ones up to `until`.

It is a rehearsal, not a copy of what the live monitor did: the live monitor saw the readings in
arrival order, with kit heartbeats, and the state it had before the 30 days; the replay starts with
no baseline, as a new patient would. The archive keeps no heartbeats, so the replay cannot judge a
silent kit: it takes the kit as alive throughout (no "kit silent", and every window without a
reading counts as missed). "Kit silent" does not depend on the plan anyway. Both plans are
replayed the same way, so the comparison between them is fair.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from contracts import AlertEvent, CarePlan, EpisodeChange, Measurement, Metric, QuestionnaireAnswer
from streams.monitor.answering import COMBINED_METRICS
from streams.monitor.engine import Engine, MetricRecord, PatientRecord
from streams.monitor.symptoms import AnswerRecord, Symptoms

__all__ = ["Engine", "Raised", "Replay", "replay"]  # Engine: the settings `replay` takes

_SEVERITY_RANK = {"info": 0, "yellow": 1, "red": 2}
_MAX_DEADLINES_PER_STEP = 10_000  # a wake time that does not move on would loop: a bug, not data
# No heartbeats in the archive: the kit is taken as alive for longer than any replay spans.
_ALIVE_S = 400 * 86_400.0


@dataclass(frozen=True, slots=True)
class Raised:
    """An alert episode the replay raised: its rule, its worst severity, when it opened, its value."""

    episode_id: str
    rule_id: str
    severity: str  # the highest of its versions
    opened_at: datetime
    value: float | None  # the worst reading's value (None: a kit rule or an answer rule)
    unit: str | None
    explanation: str  # of the version that reached the highest severity
    last_seen_at: datetime  # the latest reading or answer that fulfilled it
    resolved_at: datetime | None = None

    @property
    def nurse_facing(self) -> bool:
        return self.severity in ("yellow", "red")


@dataclass(slots=True)
class Replay:
    """What one plan would have raised: the episodes in order of opening, and counts per rule."""

    raised: list[Raised] = field(default_factory=list)
    inputs: int = 0  # readings and answers replayed

    @property
    def by_rule(self) -> dict[str, int]:
        return dict(sorted(Counter(r.rule_id for r in self.raised).items()))

    @property
    def nurse_facing(self) -> int:
        return sum(r.nurse_facing for r in self.raised)


class _Run:
    """One replay's state: the records the worker would hold for this one patient."""

    def __init__(self, plan: CarePlan | None, engine: Engine) -> None:
        self.plan, self.engine = plan, engine
        self.symptoms = Symptoms(timing=engine.timing, shown_in=engine.shown_in)
        self.off = frozenset(plan.rules_off) if plan is not None else frozenset()
        self.patient = PatientRecord()
        self.metrics: dict[Metric, MetricRecord] = {}
        self.answers = AnswerRecord()
        self.clock = 0.0
        self.events: list[AlertEvent] = []

    def deadlines(self, until: float, patient_id: str) -> None:
        """Every deadline due by `until`, each at its own instant (as a worker's timer would)."""
        for _ in range(_MAX_DEADLINES_PER_STEP):
            wake = self.patient.wake_at
            if wake is None or wake > until:
                return
            self.clock = max(self.clock, wake)
            out, _changed = self.engine.deadline(
                patient_id, self.patient, self.metrics, self.plan, clock=self.clock, now=_dt(self.clock)
            )
            self.events.extend(out.events)
            if self.patient.wake_at is not None and self.patient.wake_at <= wake:
                return  # nothing further is due before the next input
        raise RuntimeError("the replay's deadlines did not move on; a bug in the engine's wake time")

    def reading(self, m: Measurement) -> None:
        record = self.metrics.setdefault(m.metric, MetricRecord())
        now = m.measured_at
        out = self.engine.measurement(m, record, self.patient, self.plan, clock=self.clock, now=now)
        if out.duplicate:
            return
        self.events.extend(out.events)
        if m.metric.value in COMBINED_METRICS and self.answers.recent:
            self.events.extend(
                self.symptoms.reading(
                    m.patient_id,
                    m.metric.value,
                    m.measured_at.timestamp(),
                    m.measurement_id,
                    self.answers,
                    history=record.history,
                    weight_gain=record.episodes.get("weight_gain"),
                    now=now,
                    off=self.off,
                )
            )

    def answer(self, a: QuestionnaireAnswer) -> None:
        weight = self.metrics.get(Metric.BODY_WEIGHT)
        systolic = self.metrics.get(Metric.BP_SYSTOLIC)
        found = self.symptoms.answer(
            a,
            self.answers,
            weight_gain=weight.episodes.get("weight_gain") if weight is not None else None,
            systolic=systolic.history if systolic is not None else None,
            now=a.authored,
            off=self.off,
        )
        self.events.extend(found or ())


def replay(
    measurements: Iterable[Measurement],
    answers: Iterable[QuestionnaireAnswer],
    plan: CarePlan | None,
    *,
    until: datetime,
    engine: Engine | None = None,
) -> Replay:
    """The episodes `plan` would have raised on one patient's history, up to `until`.

    `measurements` and `answers` are one patient's, in any order (replayed in event time; a reading
    and an answer at the same instant: the reading first, as a kit sends the reading it asks about
    first). `engine`: the monitor's settings (timing, reminder grace, display zone; its silence
    limit is not used, see the module's docstring); the defaults when None. Inputs after `until`
    are left out.
    """
    engine = dataclasses.replace(engine or Engine(), silent_after_s=_ALIVE_S)
    end = until.timestamp()
    inputs: list[tuple[float, int, int, Measurement | QuestionnaireAnswer]] = []
    for i, m in enumerate(measurements):
        inputs.append((m.measured_at.timestamp(), 0, i, m))
    for i, a in enumerate(answers):
        inputs.append((a.authored.timestamp(), 1, i, a))
    heapq.heapify(inputs)
    run = _Run(plan, engine)
    patient_id = ""
    count = 0
    while inputs:
        t, _kind, _i, item = heapq.heappop(inputs)
        if t > end:
            break
        patient_id = item.patient_id
        run.deadlines(t, patient_id)
        run.clock = max(run.clock, t)
        if isinstance(item, Measurement):
            run.reading(item)
        else:
            run.answer(item)
        count += 1
    if patient_id:
        run.deadlines(end, patient_id)
    return Replay(raised=_episodes(run.events), inputs=count)


def _episodes(events: list[AlertEvent]) -> list[Raised]:
    """One `Raised` per episode: its highest severity and that version's explanation."""
    worst: dict[str, AlertEvent] = {}
    resolved: dict[str, datetime] = {}
    last_seen: dict[str, datetime] = {}
    for e in events:
        last_seen[e.episode_id] = max(e.last_seen_at, last_seen.get(e.episode_id, e.last_seen_at))
        held = worst.get(e.episode_id)
        if held is None or _SEVERITY_RANK.get(e.severity.value, 0) > _SEVERITY_RANK.get(
            held.severity.value, 0
        ):
            worst[e.episode_id] = e
        if e.change is EpisodeChange.RESOLVED and e.resolved_at is not None:
            resolved[e.episode_id] = e.resolved_at
    out = []
    for eid, e in worst.items():
        evidence = e.worst or e.latest
        out.append(
            Raised(
                episode_id=eid,
                rule_id=e.rule_id,
                severity=e.severity.value,
                opened_at=e.opened_at,
                value=evidence.value if evidence is not None else None,
                unit=evidence.unit if evidence is not None else None,
                explanation=e.explanation,
                last_seen_at=last_seen[eid],
                resolved_at=resolved.get(eid),
            )
        )
    out.sort(key=lambda r: (r.opened_at, r.rule_id))
    return out


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)
