"""The monitor's pure core: readings, kit status and clock deadlines in; new state and alert events out.

No Kafka here. A shell (the faust agent in `app.py`, or a micro-batch worker) keeps two kinds of
record per patient, stored as bytes with `encode` and read back with `decode_metric`/`decode_patient`:

- a `MetricRecord` per patient and metric: the metric's history and the episodes of its problems;
- a `PatientRecord` per patient: when the kit was last heard from, the kit-level episodes ("kit
  silent", "measurement missed"), and the next event-time deadline the shell must wake it at.

Every method mutates the records it is given and returns the alert events to emit. Time is event
time: `clock` is the stream's clock for the patient's partition (the latest measured time seen there,
moved on by wall time while nothing arrives), so a 14-day accelerated run behaves like 14 days.

The contract with the shell (docs/monitor-core.md says the same with the reasons):

What to persist after each call, before its events are sent (an event must never describe state a
crash could lose):
- `measurement`: the reading's own `MetricRecord`, unless `Outcome.duplicate` (then nothing changed);
  the `PatientRecord` when `Outcome.patient_changed`.
- `status`: the `PatientRecord` (`patient_changed` is always True).
- `deadline`: the `PatientRecord` (always) and the `MetricRecord` of each metric it returns.
- `announce`: nothing (it changes no record).
A `PatientRecord` can change in memory without `patient_changed`: a later `last_seen` and a later
`wake_at`. Losing those is safe, which is why they are not worth a write: `deadline` takes the kit's
latest reading time from the metric records, and an earlier stored `wake_at` only wakes the patient
early. A shell may keep such a record in memory (decoded) or drop it; both give the same events.

Deadlines: after a call that changed the `PatientRecord`, schedule the patient at its `wake_at`.
When a scheduled time comes and the record's `wake_at` is later (it moved without a write), schedule
that instead; call `deadline` once `wake_at <= clock`. Pass `deadline` every `MetricRecord` the patient
has (a metric without a record may be left out: it is the same as an empty record). It reads one
attribute of each (its newest reading) and looks further only into the records a due window or an
ended all-clear period names.

What may be cached: decoded records, across calls and batches, by the one shell that owns the
patient's partition (encode a record once per batch, not per call; a bounded cache may drop a
record the current batch has not touched, never one it has); decoded care plans. Each plan is
compiled once (its rules and its schedule of windows) and kept here, found by the plan object, else
by patient and version when the content is equal; a shell that hands the same object to every
reading of a version pays least. What must not: records of a partition after it is revoked (another
worker writes them; decode them again from the store after the next assignment), `Outcome`s and
events (send them, once persisted).

A plan change invalidates nothing the shell holds: the records carry nothing derived from the plan
but `wake_at`, which the next reading, status or deadline of the patient recomputes under the new
plan, and a compiled plan is found by the plan itself, so an old version's is never used for a new one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from contracts import (
    DEFAULT_KIT_LANGUAGE,
    METRICS,
    AlertEvent,
    CarePlan,
    CommandKind,
    EpisodeChange,
    Evidence,
    KitCommandRequest,
    KitStatusEvent,
    Measurement,
    Metric,
    Trace,
    episode_id,
    format_instant,
    reminder_id,
)
from runtime.catalogues import reminder_text
from streams.monitor.catalogue import PROBLEMS, RULES
from streams.monitor.episodes import (
    EpisodeState,
    Timing,
    clear,
    lateness,
    opener,
    qualify,
    resolve,
    resolve_if_due,
    to_event,
)
from streams.monitor.history import History, Point
from streams.monitor.plan import Schedule, compiled, rule_plan
from streams.monitor.records import (
    MetricRecord,
    PatientRecord,
    StateTooLargeError,
    decode_metric,
    decode_patient,
    encode,
)
from streams.monitor.rules import evaluate

# the records and their codec live in `records`; a shell finds them here too, beside the engine
__all__ = [
    "Engine",
    "MetricRecord",
    "Outcome",
    "PatientRecord",
    "StateTooLargeError",
    "decode_metric",
    "decode_patient",
    "encode",
]

_PROBLEMS_OF: dict[Metric, tuple[str, ...]] = {
    metric: tuple(code for code, p in PROBLEMS.items() if p.metric == metric) for metric in Metric
}
_METRIC_CODES = frozenset(m.value for m in Metric)
_MISSED_TOLERANCE_S = 30 * 60.0  # a reading just outside its window still counts for it
_KEEP_RESOLVED_S = 2 * 86_400.0  # resolved episodes are kept a while, to be re-announced after a restart


@dataclass(slots=True)
class Outcome:
    events: list[AlertEvent] = field(default_factory=list)
    duplicate: bool = False
    patient_changed: bool = False  # the PatientRecord must be written back
    commands: list[KitCommandRequest] = field(default_factory=list)  # reminders for the kit


@dataclass(frozen=True, slots=True)
class Engine:
    timing: Timing = Timing()  # noqa: RUF009  (frozen: one shared default is safe)
    silent_after_s: float = 13 * 3600.0  # kits send a heartbeat every 6 h; two missed and a margin
    missed_grace_s: float = 30 * 60.0  # a window is judged this long after it ends
    # With a reminder grace, a window still without a reading when it is judged first reminds the
    # kit (once: `reminder_id` is deterministic), and "measurement missed" opens only if the reading
    # is still missing this much later (0: no reminders, the episode opens at once).
    reminder_grace_s: float = 0.0
    # Every time in an explanation is shown in this zone: the console's (VAKTROM_ALERTS_TIME_ZONE),
    # so a nurse reads the same clock in the queue and in the text.
    shown_in: ZoneInfo = ZoneInfo("Europe/Oslo")  # noqa: RUF009  (immutable: one shared default is safe)

    def _event(
        self,
        episode: EpisodeState,
        change: EpisodeChange,
        *,
        patient_id: str,
        emitted_at: datetime,
        trace: Trace | None = None,
    ) -> AlertEvent:
        return to_event(
            episode,
            change,
            patient_id=patient_id,
            emitted_at=emitted_at,
            trace=trace or Trace(),
            shown_in=self.shown_in,
        )

    # ------------------------------------------------------------------ readings
    def measurement(
        self,
        m: Measurement,
        record: MetricRecord,
        patient: PatientRecord,
        plan: CarePlan | None,
        *,
        clock: float,
        now: datetime,
        trace: Trace | None = None,
        offset: int | None = None,
    ) -> Outcome:
        """`offset`: the reading's position in its (per-patient ordered) stream, when it has one."""
        out = Outcome()
        history = record.history
        t = m.measured_at.timestamp()
        if (offset is not None and _replayed(record, offset, t)) or history.has_seen(
            m.measurement_id, t, m.value
        ):
            out.duplicate = True
            return out
        if offset is not None:
            record.offset = offset
        point = _point(m, t)
        history.add(m.metric, point, m.measurement_id)
        out.patient_changed |= self._heard(patient, t, m.patient_id, now, out)
        # One look-up per reading: the plan's rules and window schedule, compiled once per version.
        compiled_plan = compiled(plan) if plan is not None else None
        rules = compiled_plan.rules if compiled_plan is not None else rule_plan(None)
        findings = evaluate(m.metric, point, history, rules, shown_in=self.shown_in)
        evidence: Evidence | None = None
        for problem in _PROBLEMS_OF[m.metric]:
            mine = [f for f in findings if RULES[f.rule_id].problem == problem] if findings else []
            episode = record.episodes.get(problem)
            change: EpisodeChange | None
            if mine:
                evidence = evidence or _evidence(m)  # most readings fulfil no rule: built for those that do
                episode, change = qualify(
                    episode,
                    patient_id=m.patient_id,
                    problem=problem,
                    findings=mine,
                    evidence=evidence,
                    measured_at=t,
                    late=lateness(t, clock, self.timing),
                    opened_by=opener(m.measurement_id, offset),
                )
                record.episodes[problem] = episode
                cleared = _cleared_after(history, episode)
                if cleared is not None:  # a late reading: the readings handled after it were clear
                    episode.cleared_since = cleared
                    patient.resolve_at[problem] = cleared + self.timing.resolve_after_s
                    out.patient_changed = True
                else:
                    out.patient_changed |= patient.resolve_at.pop(problem, None) is not None
            elif episode is not None:
                change = clear(episode, measured_at=t, timing=self.timing)
                if episode.open and episode.cleared_since is not None:
                    due = episode.cleared_since + self.timing.resolve_after_s
                    if patient.resolve_at.get(problem) != due:
                        patient.resolve_at[problem] = due
                        out.patient_changed = True
                elif not episode.open:
                    out.patient_changed |= patient.resolve_at.pop(problem, None) is not None
            else:
                change = None
            if change is not None and episode is not None:
                out.events.append(
                    self._event(episode, change, patient_id=m.patient_id, emitted_at=now, trace=trace)
                )
        self._returned(patient, m.metric, m.patient_id, now, out)
        _prune(record.episodes, clock)
        out.patient_changed |= self._rewake(patient, compiled_plan.schedule if compiled_plan else None)
        return out

    # ------------------------------------------------------------------ kit status
    def status(
        self, event: KitStatusEvent, patient: PatientRecord, plan: CarePlan | None, *, now: datetime
    ) -> Outcome:
        out = Outcome()
        assert event.patient_id is not None
        self._heard(patient, event.at.timestamp(), event.patient_id, now, out)
        self._rewake(patient, _schedule_of(plan))
        out.patient_changed = True  # a heartbeat's time is kept nowhere else
        return out

    def _heard(self, patient: PatientRecord, t: float, patient_id: str, now: datetime, out: Outcome) -> bool:
        """The kit is alive: note when, and end a "kit silent" episode (data returned)."""
        changed = False
        if not patient.last_seen:
            patient.missed_checked = t  # windows before the kit was first heard from are not missed
            changed = True
        # A later `last_seen` alone does not make the record worth writing: a reading's own metric
        # record, written anyway, holds its time, and `deadline` takes the latest of those before
        # it judges silence. That saves a table write (a changelog record) on most readings.
        patient.last_seen = max(patient.last_seen, t)
        silent = patient.episodes.get("kit_silent")
        if silent is not None and silent.open and t > silent.opened_at:
            silent.cleared_since = t
            out.events.append(
                self._event(silent, resolve(silent, at=t), patient_id=patient_id, emitted_at=now)
            )
            changed = True
        return changed

    def _returned(
        self, patient: PatientRecord, metric: Metric, patient_id: str, now: datetime, out: Outcome
    ) -> None:
        """A reading of a metric that was missed: the data is back."""
        episode = patient.episodes.get("measurement_missed")
        if episode is None or not episode.open or metric.value not in patient.missed:
            return
        patient.missed.remove(metric.value)
        out.patient_changed = True
        if not patient.missed:
            episode.cleared_since = now.timestamp()
            out.events.append(
                self._event(
                    episode, resolve(episode, at=episode.last_seen_at), patient_id=patient_id, emitted_at=now
                )
            )

    # ------------------------------------------------------------------ deadlines
    def deadline(
        self,
        patient_id: str,
        patient: PatientRecord,
        records: dict[Metric, MetricRecord],
        plan: CarePlan | None,
        *,
        clock: float,
        now: datetime,
    ) -> tuple[Outcome, set[Metric]]:
        """Whatever is due by `clock`: silent kits, missed windows, all-clear periods that ended.

        Returns the outcome and the metrics whose records changed.
        """
        out = Outcome(patient_changed=True)
        changed: set[Metric] = set()
        schedule = _schedule_of(plan)
        # Readings since the record was last written moved `last_seen` only in their metric records.
        latest = [r.history.recent[-1].t for r in records.values() if r.history.recent]
        patient.last_seen = max([patient.last_seen, *latest])
        # kit silent
        silent = patient.episodes.get("kit_silent")
        if (
            patient.last_seen
            and clock >= patient.last_seen + self.silent_after_s
            and (silent is None or not silent.open)
        ):
            at = patient.last_seen + self.silent_after_s
            episode = self._kit_episode(
                patient_id,
                "kit-silent",
                at,
                f"No message from the kit since {self._fmt(patient.last_seen)} "
                f"({(clock - patient.last_seen) / 3600:.0f} h)",
            )
            patient.episodes["kit_silent"] = episode
            out.events.append(
                self._event(episode, EpisodeChange.OPENED, patient_id=patient_id, emitted_at=now)
            )
        # reminders, then measurement missed a reminder grace later
        if plan is not None and plan.expected and patient.last_seen and self.reminder_grace_s > 0:
            self._remind(patient_id, patient, records, schedule, language=plan.language, clock=clock, out=out)
        if plan is not None and plan.expected and patient.last_seen:
            start = max(patient.missed_checked, patient.last_seen - 2 * 86_400.0)
            until = clock - self.missed_grace_s - self.reminder_grace_s
            # Windows ending more than the silent limit after the kit's last message were not missed
            # while it was alive (`_check_window` would skip each): no need to list them. This keeps
            # a clock jump (days of silence, or a restart into new data) from listing months.
            horizon = min(until, patient.last_seen + self.silent_after_s)
            for window in schedule.ending(start, horizon) if schedule is not None else ():
                self._check_window(
                    patient_id,
                    patient,
                    records.get(window.metric),
                    window.metric,
                    window.start,
                    window.end,
                    now,
                    out,
                )
            patient.missed_checked = max(patient.missed_checked, until)
        # all-clear periods
        for problem, due in list(patient.resolve_at.items()):
            if clock < due:
                continue
            del patient.resolve_at[problem]
            metric = PROBLEMS[problem].metric
            record = records.get(metric) if metric is not None else None
            held = record.episodes.get(problem) if record is not None else None
            if (
                held is not None
                and (change := resolve_if_due(held, now=clock, timing=self.timing)) is not None
            ):
                out.events.append(self._event(held, change, patient_id=patient_id, emitted_at=now))
                assert metric is not None
                changed.add(metric)
        _prune(patient.episodes, clock)
        self._rewake(patient, schedule)
        return out, changed

    def _remind(
        self,
        patient_id: str,
        patient: PatientRecord,
        records: dict[Metric, MetricRecord],
        schedule: Schedule | None,
        *,
        language: str,
        clock: float,
        out: Outcome,
    ) -> None:
        """A reminder to the kit for each window that ended `missed_grace_s` ago without a reading,
        in the plan's `language` (the patient's)."""
        start = max(patient.reminded_checked, patient.missed_checked, patient.last_seen - 2 * 86_400.0)
        until = clock - self.missed_grace_s
        horizon = min(until, patient.last_seen + self.silent_after_s)
        for window in schedule.ending(start, horizon) if schedule is not None else ():
            if self._unmet(patient, records.get(window.metric), window.start, window.end):
                out.commands.append(self._reminder(patient_id, window.metric, window.end, language))
                patient.reminders.append((window.metric.value, window.end))
        patient.reminded_checked = max(patient.reminded_checked, until)
        keep = clock - self.missed_grace_s - self.reminder_grace_s
        patient.reminders = [(m, due) for m, due in patient.reminders if due > keep]

    def reminders_due(
        self, patient_id: str, patient: PatientRecord, *, language: str = DEFAULT_KIT_LANGUAGE
    ) -> list[KitCommandRequest]:
        """The reminders still in their grace, to send again after a restart or rebalance (as
        `announce` does the events): one lost in a crash (state written, reminder not) goes out this
        way, and a repeat is the same record, recognised by its command id. `language`: the plan's."""
        return [
            self._reminder(patient_id, Metric(m), due, language)
            for m, due in patient.reminders
            if m in _METRIC_CODES
        ]

    def _unmet(self, patient: PatientRecord, record: MetricRecord | None, lo: float, hi: float) -> bool:
        """Whether a window of a live kit has no reading (within the tolerance)."""
        alive = patient.last_seen >= hi - self.silent_after_s
        silent = patient.episodes.get("kit_silent")
        if not alive or (silent is not None and silent.open):
            return False
        return record is None or not record.history.any_between(
            lo - _MISSED_TOLERANCE_S, hi + _MISSED_TOLERANCE_S
        )

    def _reminder(self, patient_id: str, metric: Metric, due: float, language: str) -> KitCommandRequest:
        """The reminder for a window that ended at `due`, in the patient's `language`: the same
        record whenever it is made (the same command id; the text follows the plan's language)."""
        text = reminder_text(language, metric)
        sent = _dt(due + self.missed_grace_s)
        return KitCommandRequest(
            command_id=reminder_id(patient_id=patient_id, metric=metric.value, due=_dt(due)),
            patient_id=patient_id, kind=CommandKind.REMINDER, text=text, metric=metric.value,
            sent_at=sent, expires_at=sent + timedelta(seconds=self.reminder_grace_s), origin="monitor",
        )  # fmt: skip

    def _check_window(  # noqa: PLR0917  (private; one call site, arguments named there)
        self,
        patient_id: str,
        patient: PatientRecord,
        record: MetricRecord | None,
        metric: Metric,
        lo: float,
        hi: float,
        now: datetime,
        out: Outcome,
    ) -> None:
        alive = patient.last_seen >= hi - self.silent_after_s
        silent = patient.episodes.get("kit_silent")
        if not alive or (silent is not None and silent.open):
            return  # a silent kit is its own episode, not a missed measurement
        # with reminders, a reading the reminder brought (up to the judging time) counts for the window
        late = self.missed_grace_s + self.reminder_grace_s if self.reminder_grace_s > 0 else 0.0
        if record is not None and record.history.any_between(
            lo - _MISSED_TOLERANCE_S, hi + max(_MISSED_TOLERANCE_S, late)
        ):
            return
        episode = patient.episodes.get("measurement_missed")
        text = (
            f"No {METRICS[metric].display.lower()} reading between {self._fmt(lo)} and {self._fmt(hi)} "
            "while the kit was active"
        )
        if episode is None or not episode.open:
            episode = self._kit_episode(patient_id, "measurement-missed", hi, text)
            patient.episodes["measurement_missed"] = episode
            patient.missed = [metric.value]
            out.events.append(
                self._event(episode, EpisodeChange.OPENED, patient_id=patient_id, emitted_at=now)
            )
            return
        episode.version += 1
        episode.count += 1
        episode.last_seen_at = max(episode.last_seen_at, hi)
        episode.explanation = text
        if metric.value not in patient.missed:
            patient.missed.append(metric.value)
        out.events.append(self._event(episode, EpisodeChange.UPDATED, patient_id=patient_id, emitted_at=now))

    def _fmt(self, t: float) -> str:
        return _shown(t, self.shown_in)

    def _kit_episode(self, patient_id: str, rule_id: str, at: float, text: str) -> EpisodeState:
        problem = RULES[rule_id].problem
        return EpisodeState(
            episode_id=episode_id(patient_id=patient_id, rule_id=problem, opened_by=format_instant(_dt(at))),
            problem=problem,
            rule_id=rule_id,
            severity=RULES[rule_id].severity,
            version=1,
            opened_at=at,
            last_seen_at=at,
            explanation=f"{text}; rule {rule_id}: {RULES[rule_id].summary}",
            rules=[rule_id],
        )

    def replanned(self, patient: PatientRecord, plan: CarePlan) -> bool:
        """A new care plan: its measuring windows move the next deadline. Without this, a window
        sooner than the deadline asked for before was judged only when the patient next woke (at
        worst when the kit fell silent, and then "measurement missed" was never raised: a silent kit
        is not judged on its windows). True when the deadline moved earlier: write the record."""
        return self._rewake(patient, _schedule_of(plan))

    def rewake(self, patient: PatientRecord, plan: CarePlan | None) -> None:
        """Ask a patient record's next deadline from scratch (a record made again after it could
        not be read: the shell then keeps the patient on its timer)."""
        patient.wake_at = None
        self._rewake(patient, _schedule_of(plan) if plan is not None else None)

    def _rewake(self, patient: PatientRecord, schedule: Schedule | None) -> bool:
        """Recompute the next deadline; True when it moved earlier, so the record must be written.

        A deadline that moved later need not be: the stored, earlier one only wakes the patient
        early, and the deadline check then finds nothing due and stores the new one. Writing it on
        every reading would undo the throttle on `last_seen` in `_heard` (the silent deadline moves
        with every message).
        """
        candidates = list(patient.resolve_at.values())
        silent = patient.episodes.get("kit_silent")
        if patient.last_seen and (silent is None or not silent.open):
            candidates.append(patient.last_seen + self.silent_after_s)
        if schedule is not None and patient.last_seen:
            after = max(patient.missed_checked, patient.last_seen - 2 * 86_400.0)
            end = schedule.next_end(after)
            if end is not None:
                candidates.append(end + self.missed_grace_s + self.reminder_grace_s)
            if self.reminder_grace_s > 0:
                end = schedule.next_end(max(after, patient.reminded_checked))
                if end is not None:
                    candidates.append(end + self.missed_grace_s)
        wake = min(candidates) if candidates else None
        earlier = wake is not None and (patient.wake_at is None or wake < patient.wake_at)
        patient.wake_at = wake
        return earlier

    def announce(
        self, patient_id: str, episodes: dict[str, EpisodeState], *, now: datetime
    ) -> list[AlertEvent]:
        """The current version of every episode held, to send again after a restart or rebalance.

        Consumers apply events by (episode id, version), so a repeat changes nothing; an event that
        was lost in a crash (state written, event not) is delivered this way.
        """
        out = []
        for episode in episodes.values():
            change = (
                EpisodeChange.RESOLVED
                if not episode.open
                else (EpisodeChange.OPENED if episode.version == 1 else EpisodeChange.UPDATED)
            )
            out.append(self._event(episode, change, patient_id=patient_id, emitted_at=now))
        return out


def _point(m: Measurement, t: float) -> Point:
    """A reading as history keeps it: the value as reported only when its unit is not canonical."""
    other = m.reported_unit != METRICS[m.metric].unit
    return Point(t, m.value, m.reported_value if other else None, m.reported_unit if other else "", m.flag)


def _replayed(record: MetricRecord, offset: int | None, t: float) -> bool:
    """At or before the latest position applied, and measured before the oldest reading held.

    The caller has already looked for the reading among those held (`History.has_seen`), and every
    reading applied since the oldest one held is held. So a reading at an old position measured
    within that span was never applied: a message faust dropped during recovery, read again by
    `unstick` after later ones of the patient (it must count, or it is lost). Only one older than
    anything held may be a replay the record can no longer recognise. The time test also keeps a
    recreated topic (positions from 0 again) from having its new readings taken for replays.
    """
    recent = record.history.recent
    return offset is not None and offset <= record.offset and bool(recent) and t < recent[0].t


def _cleared_after(history: History, episode: EpisodeState) -> float | None:
    """When the all-clear of an open episode began, by the readings held measured after its latest
    qualifying one (None: there are none). Each was handled and did not qualify, or it would be the
    latest, so each cleared it (`clear`); a late qualifying reading must not undo that, or the
    episode stays open until the kit sends again, which a kit gone quiet never does."""
    if not episode.open:
        return None
    later = history.before(math.inf, episode.last_seen_at)
    return next((q.t for q in later if q.t > episode.last_seen_at), None)


def _evidence(m: Measurement) -> Evidence:
    return Evidence(
        measurement_id=m.measurement_id,
        metric=m.metric.value,
        value=m.reported_value,
        unit=m.reported_unit,
        flag=m.flag,
        measured_at=m.measured_at,
    )


def _schedule_of(plan: CarePlan | None) -> Schedule | None:
    """The plan's window schedule (None: no plan, or no windows in it)."""
    return compiled(plan).schedule if plan is not None else None


def _prune(episodes: dict[str, EpisodeState], clock: float) -> None:
    if not episodes:
        return
    for problem, episode in list(episodes.items()):
        if episode.resolved_at is not None and clock - episode.resolved_at > _KEEP_RESOLVED_S:
            del episodes[problem]


@lru_cache(maxsize=4096)  # window bounds repeat across the patients of a schedule
def _shown(t: float, zone: ZoneInfo) -> str:
    return f"{datetime.fromtimestamp(t, zone):%-d %b %H:%M %Z}"


def _dt(t: float) -> datetime:
    return datetime.fromtimestamp(t, UTC)
