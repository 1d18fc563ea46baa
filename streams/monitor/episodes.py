"""Alert episodes: one open per patient and problem, updated by each qualifying reading, never duplicated.

An episode opens with the first qualifying reading and gets a deterministic id from the patient,
the problem, that reading's measurement id and its position in the input stream (`opener`), so
reprocessing the same input after a crash opens the same episode, and the same reading sent again
later (a kit's resend the state no longer recognises) opens another. Each change is a new version
(opened, updated, escalated, resolved). Severity only rises within an episode, but each version
names the rule its own reading fulfils (the most severe; at equal severity the most specific) and
quotes that reading. It resolves when the condition has
been clear for `resolve_after` seconds (a normal reading started the clock). A reading measured
long before the stream's clock is marked late, and one older than `stale_after` cannot make an
episode more than info: it is history, not news.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo

import msgspec

from contracts import AlertEvent, Baseline, EpisodeChange, Evidence, Severity, Threshold, Trace, episode_id
from streams.monitor.catalogue import PROBLEMS, RULES, SEVERITY_RANK, specificity
from streams.monitor.rules import Finding

__all__ = ["EpisodeState", "Lateness", "Timing", "clear", "opener", "qualify", "resolve_if_due", "to_event"]

_LOW_PROBLEMS = frozenset({"spo2_low", "glucose_low", "hypothermia"})


@dataclass(frozen=True, slots=True)
class Timing:
    resolve_after_s: float = 24 * 3600.0
    late_after_s: float = 2 * 3600.0
    stale_after_s: float = 24 * 3600.0


class EpisodeState(msgspec.Struct, kw_only=True):
    episode_id: str
    problem: str
    rule_id: str  # the rule behind the current severity
    severity: Severity
    version: int
    opened_at: float
    last_seen_at: float
    count: int = 1
    explanation: str
    worst: Evidence | None = None
    latest: Evidence | None = None
    baseline: Baseline | None = None
    threshold: Threshold | None = None
    late: bool = False
    cleared_since: float | None = None
    resolved_at: float | None = None
    rules: list[str] = []  # every rule that fired in this episode
    # When the episode of this problem before it resolved: a late reading cannot move this one's
    # opening back over it (two episodes of one problem at once).
    follows: float | None = None

    @property
    def open(self) -> bool:
        return self.resolved_at is None


@dataclass(frozen=True, slots=True)
class Lateness:
    late: bool
    capped: bool  # severity limited to info


def lateness(measured_at: float, clock: float, timing: Timing) -> Lateness:
    age = clock - measured_at
    return Lateness(age > timing.late_after_s, age > timing.stale_after_s)


def _badness(problem: str, evidence: Evidence | None) -> float:
    """How bad a reading is for this problem, to keep the worst one."""
    if evidence is None:
        return -math.inf
    if evidence.flag is not None:
        return math.inf if (evidence.flag == "LO") == (problem in _LOW_PROBLEMS) else -math.inf
    value = evidence.value if evidence.value is not None else 0.0
    if problem == "pulse_abnormal":
        return abs(value - 75.0)
    return -value if problem in _LOW_PROBLEMS else value


def _strongest(findings: list[Finding]) -> Finding:
    """The rule an event names: the most severe finding; at equal severity the most specific one
    (`catalogue.SPECIFIC_FIRST`: the rule that fires on fewer readings, e.g. T-2 before NEWS2-T)."""
    return max(findings, key=lambda f: (SEVERITY_RANK[f.severity], specificity(f.rule_id)))


def opener(item_id: str, offset: int | None) -> str:
    """What an episode's id is made from (`episode_id`'s `opened_by`): the id of the reading or answer
    that opened it and, when it came from Kafka, its offset there. A replay (the same record again,
    after a crash) gives the same id; the same reading in another record (a kit's resend the
    patient's state no longer recognises: after its record was found damaged and started again, or
    after the episode it opened was pruned) gives another. With the reading's id alone that resend
    opened the old episode again at version 1, and the response centre, which keeps the highest
    version of an id, ignored it and every later change until the versions caught up: a worsening
    hidden from the nurse."""
    return item_id if offset is None or offset < 0 else f"{item_id}@{offset}"


def qualify(
    episode: EpisodeState | None,
    *,
    patient_id: str,
    problem: str,
    findings: list[Finding],
    evidence: Evidence,
    measured_at: float,
    late: Lateness,
    opened_by: str,
) -> tuple[EpisodeState, EpisodeChange]:
    """A reading fulfils rules of `problem`: open the episode or update it. Returns the new state.
    `opened_by`: the reading's `opener`."""
    best = _strongest(findings)
    severity = Severity.INFO if late.capped else best.severity
    if episode is None or not (episode.open or _resolved_after(episode, measured_at)):
        opened = EpisodeState(
            episode_id=episode_id(patient_id=patient_id, rule_id=problem, opened_by=opened_by),
            problem=problem,
            rule_id=best.rule_id,
            severity=severity,
            version=1,
            opened_at=measured_at,
            last_seen_at=measured_at,
            explanation=best.explanation,
            worst=evidence,
            latest=evidence,
            baseline=best.baseline,
            threshold=best.threshold,
            late=late.late,
            rules=sorted({f.rule_id for f in findings}),
            follows=episode.resolved_at if episode is not None else None,
        )
        return opened, EpisodeChange.OPENED
    # A reading measured before the episode's resolution that qualifies shows it was not clear then:
    # the resolution came too early (decided on a stream clock ahead of this patient's readings, or
    # before a reading faust dropped was read again). It reopens that episode; a new one would
    # overlap it, two episodes of one problem at once (a duplicate for the nurse).
    episode.resolved_at = None
    episode.version += 1
    episode.count += 1
    episode.cleared_since = None
    if measured_at >= episode.last_seen_at:
        episode.last_seen_at = measured_at
        episode.latest = evidence
        episode.late = late.late
    if episode.follows is None or measured_at >= episode.follows:
        episode.opened_at = min(episode.opened_at, measured_at)
    if _badness(problem, evidence) > _badness(problem, episode.worst):
        episode.worst = evidence
    episode.rules = sorted({*episode.rules, *(f.rule_id for f in findings)})
    change = EpisodeChange.UPDATED
    if SEVERITY_RANK[severity] > SEVERITY_RANK[episode.severity]:
        episode.severity = severity
        change = EpisodeChange.ESCALATED
    # Each version names the rule that fires now and quotes this version's reading (issue #27: a
    # 34.8 °C reading in an episode opened by NEWS2-T at 35.0 °C is hypothermia, T-2). The severity
    # stays the worst so far; the worst reading stays in `worst`.
    episode.rule_id = best.rule_id
    episode.baseline, episode.threshold = best.baseline, best.threshold
    episode.explanation = best.explanation
    return episode, change


def _resolved_after(episode: EpisodeState, measured_at: float) -> bool:
    return episode.resolved_at is not None and measured_at < episode.resolved_at


def clear(episode: EpisodeState, *, measured_at: float, timing: Timing) -> EpisodeChange | None:
    """A normal reading of the problem's metric: start (or continue) the all-clear period."""
    if not episode.open or measured_at <= episode.last_seen_at:
        return None  # a late normal reading from before the problem does not clear it
    if episode.cleared_since is None or measured_at < episode.cleared_since:
        episode.cleared_since = measured_at
    return resolve_if_due(episode, now=measured_at, timing=timing)


def resolve_if_due(episode: EpisodeState, *, now: float, timing: Timing) -> EpisodeChange | None:
    if (
        episode.open
        and episode.cleared_since is not None
        and now >= episode.cleared_since + timing.resolve_after_s
    ):
        return resolve(episode, at=episode.cleared_since + timing.resolve_after_s)
    return None


def resolve(episode: EpisodeState, *, at: float) -> EpisodeChange:
    episode.version += 1
    episode.resolved_at = at
    return EpisodeChange.RESOLVED


def _instant(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def to_event(
    episode: EpisodeState,
    change: EpisodeChange,
    *,
    patient_id: str,
    emitted_at: datetime,
    trace: Trace = Trace(),  # noqa: B008  (frozen, so one shared default is safe)
    shown_in: tzinfo = UTC,
) -> AlertEvent:
    """The event of one version; `shown_in` is the time zone of the times in its explanation."""
    problem = PROBLEMS[episode.problem]
    rule = RULES[episode.rule_id]
    explanation = episode.explanation
    if change is EpisodeChange.RESOLVED:
        since = _instant(episode.cleared_since or episode.resolved_at or 0.0).astimezone(shown_in)
        explanation = f"{problem.title}: resolved, clear since {since:%-d %b %H:%M %Z}; was: {explanation}"
    return AlertEvent(
        episode_id=episode.episode_id,
        version=episode.version,
        change=change,
        patient_id=patient_id,
        rule_id=episode.rule_id,
        rule_source=rule.source,
        metric=problem.metric.value if problem.metric is not None else None,
        severity=episode.severity,
        explanation=explanation,
        opened_at=_instant(episode.opened_at),
        last_seen_at=_instant(episode.last_seen_at),
        resolved_at=_instant(episode.resolved_at) if episode.resolved_at is not None else None,
        count=episode.count,
        worst=episode.worst,
        latest=episode.latest,
        baseline=episode.baseline,
        threshold=episode.threshold,
        late=episode.late,
        emitted_at=emitted_at,
        trace=trace,
    )
