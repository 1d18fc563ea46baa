"""Rules on questionnaire answers, alone and together with measurements: answers and readings in,
alert events out. Pure, no Kafka (the batch step keeps the record and calls it).

Per patient one `AnswerRecord` (state key `<patient>|answers`): the answers of the last week (time,
questionnaire, worsening symptoms, id) and the episodes of the answer problems. The rules
(docs/clinical-rules.md; ids in `catalogue.py`):

    SYM-1  more breathless (HF daily check, COPD check)                         yellow
    SYM-2  a weight gain (an HF-1 or HF-2 episode: > 2 kg in 3 days by default) AND worse
           breathlessness, breathlessness lying flat or ankle swelling answered no
           more than 72 h before or after its qualifying readings                red
    SYM-3  systolic < 90 mm[Hg] AND dizziness answered within 24 h of it         red
    CONTACT-1  "please contact me" (questionnaire contact-request)               yellow, its own episode

SYM-2 and SYM-3 combine two inputs that may arrive in either order (a patient weighs, then answers;
catching up, answers may come before the readings): each is evaluated when the answer comes (against
the readings held) and when the reading comes (against the answers held), by event time, so the
order of arrival does not matter. SYM-2 is the same problem as SYM-1 ("worsening symptoms"), so the
combined finding escalates that episode rather than opening a second one; the weight episode of HF-1
stays as it is (yellow): the nurse sees a red symptom episode that names the weight gain.

An episode clears on an answer of the same check without the symptom and resolves once clear for
the all-clear period (as readings do); a contact request resolves at the first answer after the
all-clear period (the nurse closes it in the console before that).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, tzinfo

import msgspec

from contracts import (
    CONTACT_REQUEST,
    COPD_CHECK,
    HF_DAILY,
    AlertEvent,
    EpisodeChange,
    Evidence,
    QuestionnaireAnswer,
    Severity,
    Threshold,
    Trace,
    episode_id,
)
from streams.monitor.catalogue import RULES, SEVERITY_RANK
from streams.monitor.episodes import EpisodeState, Timing, clear, opener, resolve_if_due, to_event
from streams.monitor.history import History, Point

__all__ = [
    "BP_SYSTOLIC",
    "AnswerRecord",
    "SeenAnswer",
    "Symptoms",
    "decode_answers",
    "encode_answers",
    "severity_of",
]

# Metric.BP_SYSTOLIC's code (helper bp adds the member; the code is fixed by #32's split)
BP_SYSTOLIC = "bp_systolic"
BODY_WEIGHT = "body_weight"

DAY_S = 86_400.0
_KEEP_S = 7 * DAY_S  # answers kept: longer than any rule's window
_KEEP_RESOLVED_S = 2 * DAY_S
# The newest answers kept, whatever their age: a patient answers a few a day; a kit that floods the
# channel would otherwise grow the state past what Kafka takes as one changelog record (and make
# every answer's replay check slower)
_MAX_RECENT = 200
# The rules' fixed parameters (not set per plan; a plan may switch a rule off, `rules_off`)
_SYM2_WINDOW_S = 72 * 3600.0  # symptoms this close to a weight gain's readings combine with it
_SYM3_WINDOW_S = 24 * 3600.0  # dizziness this close to a low systolic reading
_SYM3_SYSTOLIC_BELOW = 90.0  # mm[Hg], strict: BEAT-HF's "< 90 with symptoms"
_HF_SIGNS = frozenset({"breathless", "orthopnoea", "swelling"})  # SYM-2's symptoms (BEAT-HF)
_BREATHLESS_CHECKS = frozenset({HF_DAILY, COPD_CHECK})


class SeenAnswer(msgspec.Struct, array_like=True, frozen=True):
    t: float  # authored, event time
    questionnaire: str
    worsening: tuple[str, ...]
    answer_id: str


class AnswerRecord(msgspec.Struct, array_like=True):
    recent: list[SeenAnswer] = []  # oldest first
    episodes: dict[str, EpisodeState] = {}
    offset: int = -1  # the latest answers-topic offset applied (a replay is at or before it)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnswerRecord)


def encode_answers(record: AnswerRecord) -> bytes:
    return _encoder.encode(record)


def decode_answers(raw: bytes | None) -> AnswerRecord:
    return AnswerRecord() if raw is None else _decoder.decode(raw)


@dataclass(frozen=True, slots=True)
class _Found:
    rule_id: str
    text: str
    threshold: Threshold | None = None
    evidence: Evidence | None = None  # the weight or pressure reading it combines with


def _low_systolic(systolic: History | None, lo: float, hi: float, limit: float) -> Point | None:
    if systolic is None:
        return None
    low = [p for p in systolic.before(hi + 1e-3, lo) if p.value is not None and p.value < limit]
    return min(low, key=lambda p: p.value or 0.0) if low else None


class Symptoms:
    """The answer rules of one monitor; `shown_in`: the time zone of times in explanations."""

    def __init__(self, *, timing: Timing, shown_in: tzinfo) -> None:
        self.timing, self.shown_in = timing, shown_in

    # ------------------------------------------------------------------ entry points
    def answer(
        self,
        a: QuestionnaireAnswer,
        record: AnswerRecord,
        *,
        weight_gain: EpisodeState | None,
        systolic: History | None,
        now: datetime,
        offset: int | None = None,
        off: frozenset[str] = frozenset(),
    ) -> list[AlertEvent] | None:
        """An answer: its events, or None when it is a replay (nothing changed, nothing to write).
        `off`: the rules the patient's plan switched off (`rules_off`)."""
        t = a.authored.timestamp()
        if (offset is not None and offset <= record.offset) or any(
            s.answer_id == a.answer_id for s in record.recent
        ):
            return None
        if offset is not None:
            record.offset = offset
        by = opener(a.answer_id, offset)
        seen = SeenAnswer(t, a.questionnaire, tuple(a.worsening), a.answer_id)
        record.recent.append(seen)
        record.recent.sort(key=lambda s: s.t)
        events: list[AlertEvent] = []
        if a.questionnaire == CONTACT_REQUEST and "CONTACT-1" not in off:
            topic = next((i.code for i in a.items if i.link_id == "topic" and i.code), None)
            text = f"The patient asked to be contacted at {self._fmt(t)}" + (
                f" (about: {topic})" if topic else ""
            )
            self._raise(
                record,
                a.patient_id,
                "contact_request",
                _Found("CONTACT-1", text),
                t,
                by,
                now,
                events,
            )
        else:
            self._contact_due(record, a.patient_id, t, now, events)
        found = self._symptom_findings(record, seen, None if "SYM-2" in off else weight_gain)
        if found is not None and found.rule_id not in off:
            self._raise(record, a.patient_id, "symptoms_worse", found, t, by, now, events)
        elif found is None and a.questionnaire in _BREATHLESS_CHECKS:
            self._clear(record, a.patient_id, "symptoms_worse", t, now, events)
        low = None if "SYM-3" in off else self._low_bp_finding(record, t, systolic)
        if low is not None:
            self._raise(record, a.patient_id, "low_bp_symptomatic", low, t, by, now, events)
        elif a.questionnaire == HF_DAILY and "dizzy" not in a.worsening:
            self._clear(record, a.patient_id, "low_bp_symptomatic", t, now, events)
        _prune(record, t)
        return events

    def reading(
        self,
        patient_id: str,
        metric: str,
        t: float,
        opened_by: str,
        record: AnswerRecord,
        *,
        history: History,
        weight_gain: EpisodeState | None = None,
        now: datetime,
        off: frozenset[str] = frozenset(),
    ) -> list[AlertEvent]:
        """A new (not replayed) weight or systolic reading, already in `history` (and a weight already
        judged by HF-1/HF-2: `weight_gain` is the weight-gain episode after it): the combined rules.
        `opened_by`: the reading's `opener`, should it open an episode."""
        events: list[AlertEvent] = []
        if not record.recent:
            return events
        if metric == BODY_WEIGHT and "SYM-2" not in off:
            qualified = weight_gain is not None and weight_gain.last_seen_at == t
            found = self._combined(record.recent, weight_gain) if qualified else None
            if found is not None:
                self._raise(record, patient_id, "symptoms_worse", found, t, opened_by, now, events)
        elif metric == BP_SYSTOLIC and "SYM-3" not in off:
            low = self._low_bp_finding(record, t, history)
            if low is not None:
                self._raise(record, patient_id, "low_bp_symptomatic", low, t, opened_by, now, events)
        return events

    # ------------------------------------------------------------------ findings
    def _worse(self, record: AnswerRecord, lo: float, hi: float, signs: frozenset[str]) -> list[SeenAnswer]:
        return [s for s in record.recent if lo <= s.t <= hi and signs.intersection(s.worsening)]

    def _symptom_findings(
        self, record: AnswerRecord, seen: SeenAnswer, weight_gain: EpisodeState | None
    ) -> _Found | None:
        """SYM-2 when this answer reports a heart-failure sign within 72 h of a weight-gain episode's
        qualifying readings, else SYM-1 when it reports more breathlessness."""
        if _HF_SIGNS.intersection(seen.worsening):
            found = self._combined([seen], weight_gain)
            if found is not None:
                return found
        if "breathless" in seen.worsening:
            return _Found("SYM-1", f"The patient answered more breathless at {self._fmt(seen.t)}")
        return None

    def _combined(self, answers: list[SeenAnswer], gain: EpisodeState | None) -> _Found | None:
        """SYM-2: a weight gain (an HF-1/HF-2 episode, its readings from `opened_at` to `last_seen_at`)
        and an answer with a worse heart-failure sign no more than 72 h before or after them."""
        if gain is None or gain.problem != "weight_gain":
            return None
        window = _SYM2_WINDOW_S
        lo, hi = gain.opened_at - window, gain.last_seen_at + window
        matched = [s for s in answers if lo <= s.t <= hi and _HF_SIGNS.intersection(s.worsening)]
        if not matched:
            return None
        signs = sorted({w for s in matched for w in s.worsening if w in _HF_SIGNS})
        latest = gain.latest
        weight = (
            f"{latest.value:g} kg on {self._fmt(latest.measured_at.timestamp())}, "
            if latest and latest.value
            else ""
        )
        text = (
            f"Weight gain ({weight}{gain.rule_id} since {self._fmt(gain.opened_at)}) with worse "
            f"{', '.join(signs)} answered {self._fmt(matched[-1].t)}"
        )
        limit = gain.threshold.value if gain.threshold is not None else RULES["HF-1"].params["kg"]
        return _Found("SYM-2", text, Threshold(op=">", value=limit, unit="kg", window="72h"), latest)

    def _low_bp_finding(self, record: AnswerRecord, t: float, systolic: History | None) -> _Found | None:
        window, limit = _SYM3_WINDOW_S, _SYM3_SYSTOLIC_BELOW
        dizzy = self._worse(record, t - window, t + window, frozenset({"dizzy"}))
        if not dizzy:
            return None
        low = _low_systolic(systolic, t - window, t + window, limit)
        if low is None:
            return None
        text = (
            f"Systolic {low.value:g} mm[Hg] on {self._fmt(low.t)} with dizziness answered "
            f"{self._fmt(dizzy[-1].t)}"
        )
        return _Found("SYM-3", text, Threshold(op="<", value=limit, unit="mm[Hg]", window="24h"))

    # ------------------------------------------------------------------ episodes
    def _raise(  # noqa: PLR0917 (private; the episode's parts, named at each call)
        self,
        record: AnswerRecord,
        patient_id: str,
        problem: str,
        found: _Found,
        t: float,
        opened_by: str,
        now: datetime,
        events: list[AlertEvent],
    ) -> None:
        rule = RULES[found.rule_id]
        text = f"{found.text}; rule {found.rule_id}: {rule.summary}"
        held = record.episodes.get(problem)
        if held is None or not held.open:
            episode = EpisodeState(
                episode_id=episode_id(patient_id=patient_id, rule_id=problem, opened_by=opened_by),
                problem=problem,
                rule_id=found.rule_id,
                severity=rule.severity,
                version=1,
                opened_at=t,
                last_seen_at=t,
                explanation=text,
                threshold=found.threshold,
                worst=found.evidence,
                latest=found.evidence,
                rules=[found.rule_id],
                follows=held.resolved_at if held is not None else None,
            )
            record.episodes[problem] = episode
            events.append(self._event(episode, EpisodeChange.OPENED, patient_id, now))
            return
        held.version += 1
        held.count += 1
        held.cleared_since = None
        held.last_seen_at = max(held.last_seen_at, t)
        held.rules = sorted({*held.rules, found.rule_id})
        change = EpisodeChange.UPDATED
        if SEVERITY_RANK[rule.severity] > SEVERITY_RANK[held.severity]:
            held.severity, change = rule.severity, EpisodeChange.ESCALATED
        if SEVERITY_RANK[rule.severity] >= SEVERITY_RANK[RULES[held.rule_id].severity]:
            held.rule_id, held.explanation, held.threshold = found.rule_id, text, found.threshold
            if found.evidence is not None:
                held.latest = found.evidence
                held.worst = held.worst or found.evidence
        events.append(self._event(held, change, patient_id, now))

    def _clear(  # noqa: PLR0917 (private; like `_raise`)
        self,
        record: AnswerRecord,
        patient_id: str,
        problem: str,
        t: float,
        now: datetime,
        events: list[AlertEvent],
    ) -> None:
        held = record.episodes.get(problem)
        if held is not None and (change := clear(held, measured_at=t, timing=self.timing)) is not None:
            events.append(self._event(held, change, patient_id, now))

    def _contact_due(
        self, record: AnswerRecord, patient_id: str, t: float, now: datetime, events: list[AlertEvent]
    ) -> None:
        held = record.episodes.get("contact_request")
        if held is None or not held.open:
            return
        held.cleared_since = held.cleared_since or held.last_seen_at
        change = resolve_if_due(held, now=t, timing=self.timing)
        if change is not None:
            events.append(self._event(held, change, patient_id, now))

    def _event(
        self, episode: EpisodeState, change: EpisodeChange, patient_id: str, now: datetime
    ) -> AlertEvent:
        return to_event(
            episode, change, patient_id=patient_id, emitted_at=now, trace=Trace(), shown_in=self.shown_in
        )

    def announce(self, patient_id: str, record: AnswerRecord, *, now: datetime) -> list[AlertEvent]:
        """Every episode's current version again (after a restart; applied by (id, version))."""
        out = []
        for episode in record.episodes.values():
            change = (
                EpisodeChange.RESOLVED
                if not episode.open
                else (EpisodeChange.OPENED if episode.version == 1 else EpisodeChange.UPDATED)
            )
            out.append(self._event(episode, change, patient_id, now))
        return out

    def _fmt(self, t: float) -> str:
        return datetime.fromtimestamp(t, self.shown_in).strftime("%-d %b %H:%M")


def _prune(record: AnswerRecord, t: float) -> None:
    record.recent = [s for s in record.recent if t - s.t <= _KEEP_S][-_MAX_RECENT:]
    for problem, episode in list(record.episodes.items()):
        if episode.resolved_at is not None and t - episode.resolved_at > _KEEP_RESOLVED_S:
            del record.episodes[problem]


def severity_of(record: AnswerRecord, problem: str) -> Severity | None:
    """The open episode's severity of `problem`, for tests and views."""
    held = record.episodes.get(problem)
    return held.severity if held is not None and held.open else None
