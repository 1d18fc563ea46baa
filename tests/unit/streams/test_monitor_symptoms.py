"""Answer rules SYM-1..3 and CONTACT-1 at their boundaries, in either order of arrival, with no duplicates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec

from contracts import (
    AlertEvent,
    AnsweredItem,
    EpisodeChange,
    Evidence,
    Measurement,
    Metric,
    QuestionnaireAnswer,
    Severity,
    answer_id,
    measurement_id,
)
from streams.monitor.batch import Names, Processor, Record
from streams.monitor.engine import Engine
from streams.monitor.episodes import EpisodeState, Timing
from streams.monitor.history import History, Point
from streams.monitor.metrics import MonitorMetrics
from streams.monitor.store import MemoryStore
from streams.monitor.symptoms import AnswerRecord, Symptoms, decode_answers, encode_answers, severity_of

T0 = datetime(2026, 11, 20, 7, 30, tzinfo=UTC)
H = 3600.0
P = "PAT-S1"


def _symptoms() -> Symptoms:
    return Symptoms(timing=Timing(), shown_in=ZoneInfo("Europe/Oslo"))


def _answer(at: datetime, questionnaire: str = "hf-daily", *worse: str, rid: str = "") -> QuestionnaireAnswer:
    items: list[AnsweredItem] = []
    if questionnaire == "hf-daily":
        items = [
            AnsweredItem(link_id="breathless", code="worse" if "breathless" in worse else "same"),
            AnsweredItem(link_id="breathless-lying-flat", boolean="orthopnoea" in worse),
            AnsweredItem(link_id="ankle-swelling", code="worse" if "swelling" in worse else "same"),
            AnsweredItem(link_id="dizzy", boolean="dizzy" in worse),
        ]
    elif questionnaire == "contact-request":
        items = [AnsweredItem(link_id="topic", code="symptoms")]
    return QuestionnaireAnswer(
        answer_id=answer_id(
            kit_id="K",
            patient_id=P,
            response_id=rid or at.isoformat(),
            questionnaire=questionnaire,
            authored=at,
        ),
        patient_id=P,
        kit_id="K",
        questionnaire=questionnaire,
        version="1",
        authored=at,
        received_at=at,
        items=items,
        score=len(worse),
        worsening=list(worse),
    )


def _history(*points: tuple[datetime, float]) -> History:
    history = History()
    for at, value in points:
        history.recent.append(Point(at.timestamp(), value))
    return history


def _gain(opened: datetime, last: datetime, rule: str = "HF-1", kg: float = 82.5) -> EpisodeState:
    """A weight-gain episode as the engine keeps it: its qualifying readings from `opened` to `last`."""
    latest = Evidence(measurement_id="e" * 32, metric="body_weight", value=kg, unit="kg", measured_at=last)
    return EpisodeState(
        episode_id="f" * 32, problem="weight_gain", rule_id=rule, severity=Severity.YELLOW, version=1,
        opened_at=opened.timestamp(), last_seen_at=last.timestamp(), explanation="gain", latest=latest,
    )  # fmt: skip


def _apply(
    s: Symptoms,
    record: AnswerRecord,
    a: QuestionnaireAnswer,
    *,
    gain: EpisodeState | None = None,
    systolic: History | None = None,
) -> list[AlertEvent]:
    events = s.answer(a, record, weight_gain=gain, systolic=systolic, now=T0)
    assert events is not None
    return events


# ------------------------------------------------------------------ SYM-1
def test_sym1_more_breathless_alone_is_a_yellow_alert() -> None:
    """A worse-breathlessness answer alone opens a yellow 'worsening symptoms' episode (SYM-1)."""
    record = AnswerRecord()
    (event,) = _apply(_symptoms(), record, _answer(T0, "hf-daily", "breathless"))
    assert (event.rule_id, event.severity, event.change) == ("SYM-1", Severity.YELLOW, EpisodeChange.OPENED)
    assert event.metric is None


def test_sym1_not_for_the_same_breathlessness_or_other_symptoms_alone() -> None:
    """'same' breathlessness, or swelling alone without a weight gain, raises nothing."""
    record = AnswerRecord()
    assert _apply(_symptoms(), record, _answer(T0)) == []
    assert _apply(_symptoms(), record, _answer(T0 + timedelta(hours=1), "hf-daily", "swelling")) == []


def test_sym1_from_the_copd_check_too() -> None:
    """The COPD check's breathlessness answer counts as well (Anthonisen's cardinal symptom)."""
    a = msgspec.structs.replace(
        _answer(T0, "copd-check", "breathless"), items=[AnsweredItem(link_id="breathless", code="worse")]
    )
    assert [e.rule_id for e in _apply(_symptoms(), AnswerRecord(), a)] == ["SYM-1"]


# ------------------------------------------------------------------ SYM-2
def test_sym2_a_weight_gain_episode_with_symptoms_is_red() -> None:
    """An HF-1 (or HF-2) weight gain together with worse swelling is red; without a gain it is nothing,
    and a weight drift (HF-3, another problem) is no gain for SYM-2."""
    answer = _answer(T0, "hf-daily", "swelling")
    (event,) = _apply(_symptoms(), AnswerRecord(), answer, gain=_gain(T0 - timedelta(hours=5), T0))
    assert (event.rule_id, event.severity) == ("SYM-2", Severity.RED)
    assert event.latest is not None
    assert event.latest.value == 82.5
    assert "HF-1" in event.explanation
    assert _apply(_symptoms(), AnswerRecord(), answer) == []
    drift = msgspec.structs.replace(_gain(T0, T0), problem="weight_drift", rule_id="HF-3")
    assert _apply(_symptoms(), AnswerRecord(), answer, gain=drift) == []


def test_sym2_the_answer_within_72_hours_of_the_gains_readings() -> None:
    """An answer 72 h after the gain's last qualifying reading combines, 72 h and a second does not;
    likewise 72 h before its first."""
    gain = _gain(T0, T0 + timedelta(days=1))
    cases = (
        (T0 + timedelta(days=1, hours=72), ["SYM-2"]),
        (T0 + timedelta(days=1, hours=72, seconds=1), []),
        (T0 - timedelta(hours=72), ["SYM-2"]),
        (T0 - timedelta(hours=72, seconds=1), []),
    )
    for at, expected in cases:
        got = _apply(_symptoms(), AnswerRecord(), _answer(at, "hf-daily", "orthopnoea"), gain=gain)
        assert [e.rule_id for e in got] == expected, at


def test_sym2_when_the_weight_comes_after_the_answer() -> None:
    """Answer first (SYM-1 yellow), then the weighing that fulfils HF-1: the same episode escalates
    to red (SYM-2); a weighing that did not qualify (the episode's last reading is older) does not."""
    s, record = _symptoms(), AnswerRecord()
    (first,) = _apply(s, record, _answer(T0 - timedelta(hours=2), "hf-daily", "breathless"))
    stale = _gain(T0 - timedelta(days=1), T0 - timedelta(hours=3))
    assert (
        s.reading(
            P, "body_weight", T0.timestamp(), "m" * 32, record, history=History(), weight_gain=stale, now=T0
        )
        == []
    )
    gain = _gain(T0 - timedelta(days=1), T0)
    (second,) = s.reading(
        P, "body_weight", T0.timestamp(), "m" * 32, record, history=History(), weight_gain=gain, now=T0
    )
    assert second.episode_id == first.episode_id
    assert (second.rule_id, second.severity, second.change) == (
        "SYM-2",
        Severity.RED,
        EpisodeChange.ESCALATED,
    )


def test_sym2_symptoms_answered_more_than_72_hours_before_the_gain_do_not_combine() -> None:
    """A worse answer 72 h before the gain's first reading combines; 72 h and a second before does not."""
    for hours, expected in ((72.0, ["SYM-2"]), (72.0 + 1 / 3600, [])):
        s, record = _symptoms(), AnswerRecord()
        _apply(s, record, _answer(T0 - timedelta(hours=hours), "hf-daily", "swelling"))
        gain = _gain(T0, T0)
        got = s.reading(
            P, "body_weight", T0.timestamp(), "m" * 32, record, history=History(), weight_gain=gain, now=T0
        )
        assert [e.rule_id for e in got] == expected


# ------------------------------------------------------------------ SYM-3
def test_sym3_systolic_below_90_with_dizziness_is_red_89_not_90() -> None:
    """Systolic 89 with dizziness within 24 h is red; 90 is not below the limit."""
    for value, expected in ((89.0, ["SYM-3"]), (90.0, [])):
        systolic = _history((T0 - timedelta(hours=3), value))
        got = _apply(_symptoms(), AnswerRecord(), _answer(T0, "hf-daily", "dizzy"), systolic=systolic)
        assert [e.rule_id for e in got] == expected


def test_sym3_reading_after_the_answer_and_its_24_hour_window() -> None:
    """A low systolic 24 h after a dizzy answer still combines; 24 h and a second after does not."""
    for hours, expected in ((24.0, ["SYM-3"]), (24.0 + 1 / 3600, [])):
        s, record = _symptoms(), AnswerRecord()
        _apply(s, record, _answer(T0, "hf-daily", "dizzy"))
        t = T0 + timedelta(hours=hours)
        got = s.reading(P, "bp_systolic", t.timestamp(), "m" * 32, record, history=_history((t, 85.0)), now=t)
        assert [e.rule_id for e in got] == expected


def test_sym3_a_dizzy_answer_handled_days_after_the_low_reading() -> None:
    """Catching up, answers may be handled after days of later readings (they are not in the
    event-time merge): the systolic history still holds the low reading a week on, so SYM-3 fires."""
    history = History()
    for hours in range(0, 7 * 24, 12):  # twice a day for a week, one low reading on the first day
        at = T0 + timedelta(hours=hours)
        history.add(
            Metric.BP_SYSTOLIC, Point(at.timestamp(), 85.0 if hours == 12 else 120.0), f"m{hours:031d}"
        )
    answer = _answer(T0 + timedelta(hours=20), "hf-daily", "dizzy")
    assert [e.rule_id for e in _apply(_symptoms(), AnswerRecord(), answer, systolic=history)] == ["SYM-3"]


def test_a_low_systolic_without_dizziness_is_not_sym3() -> None:
    """No dizziness: the BP rules of the bp metric decide, not SYM-3."""
    got = _apply(_symptoms(), AnswerRecord(), _answer(T0), systolic=_history((T0, 80.0)))
    assert got == []


# ------------------------------------------------------------------ CONTACT-1
def test_contact_request_is_its_own_episode_and_a_second_request_updates_it() -> None:
    """'Please contact me' opens a contact episode apart from symptoms; a repeat is no second episode."""
    s, record = _symptoms(), AnswerRecord()
    (opened,) = _apply(s, record, _answer(T0, "contact-request"))
    assert (opened.rule_id, opened.severity, opened.change) == (
        "CONTACT-1",
        Severity.YELLOW,
        EpisodeChange.OPENED,
    )
    assert "about: symptoms" in opened.explanation
    (again,) = _apply(s, record, _answer(T0 + timedelta(hours=1), "contact-request"))
    assert again.episode_id == opened.episode_id
    assert again.change is EpisodeChange.UPDATED
    assert again.count == 2
    (sym,) = _apply(s, record, _answer(T0 + timedelta(hours=2), "hf-daily", "breathless"))
    assert sym.episode_id != opened.episode_id


def test_contact_request_resolves_at_an_answer_after_the_all_clear_period() -> None:
    """An answer 24 h after the last request resolves the contact episode; one earlier does not."""
    s, record = _symptoms(), AnswerRecord()
    _apply(s, record, _answer(T0, "contact-request"))
    assert _apply(s, record, _answer(T0 + timedelta(hours=23))) == []
    (resolved,) = _apply(s, record, _answer(T0 + timedelta(hours=24)))
    assert resolved.change is EpisodeChange.RESOLVED
    assert resolved.rule_id == "CONTACT-1"


# ------------------------------------------------------------------ replays and state
def test_a_replayed_answer_changes_nothing() -> None:
    """The same answer again (by id, or by an offset already applied) is recognised and ignored."""
    s, record = _symptoms(), AnswerRecord()
    a = _answer(T0, "hf-daily", "breathless")
    assert s.answer(a, record, weight_gain=None, systolic=None, now=T0, offset=5)
    assert s.answer(a, record, weight_gain=None, systolic=None, now=T0) is None
    other = _answer(T0 + timedelta(hours=1), "hf-daily", "breathless")
    assert s.answer(other, record, weight_gain=None, systolic=None, now=T0, offset=5) is None


def test_the_record_round_trips_and_announces_its_episodes() -> None:
    """What the changelog holds decodes to the same record; a restart announces the open episode."""
    s, record = _symptoms(), AnswerRecord()
    _apply(s, record, _answer(T0, "hf-daily", "breathless"))
    again = decode_answers(encode_answers(record))
    assert again == record
    assert severity_of(again, "symptoms_worse") is Severity.YELLOW
    assert [e.rule_id for e in s.announce(P, again, now=T0)] == ["SYM-1"]


def test_symptoms_clear_and_resolve_after_the_all_clear_period() -> None:
    """A later check without the symptom starts the all-clear period; one 24 h later resolves it."""
    s, record = _symptoms(), AnswerRecord()
    _apply(s, record, _answer(T0, "hf-daily", "breathless"))
    assert _apply(s, record, _answer(T0 + timedelta(days=1))) == []
    (resolved,) = _apply(s, record, _answer(T0 + timedelta(days=2)))
    assert resolved.change is EpisodeChange.RESOLVED


# ------------------------------------------------------------------ through the batch step
def _processor() -> Processor:
    names = Names(measurements="m", status="s", careplans="c", answers="a")
    processor = Processor(engine=Engine(), names=names, store=MemoryStore(), metrics=MonitorMetrics())
    processor.load([0])
    processor.take()
    return processor


def _weight(value: float, at: datetime) -> bytes:
    mid = measurement_id(
        device_id="SC", patient_id=P, metric="body_weight", reported_value=value, reported_unit="kg",
        flag=None, measured_at=at,
    )  # fmt: skip
    m = Measurement(
        measurement_id=mid, patient_id=P, kit_id="K", device_id="SC", metric=Metric.BODY_WEIGHT,
        loinc="29463-7", value=value, unit="kg", reported_value=value, reported_unit="kg",
        measured_at=at, received_at=at,
    )  # fmt: skip
    return msgspec.json.encode(m)


def test_the_batch_step_combines_answers_with_readings_and_writes_the_state_once() -> None:
    """Weights, a symptomatic answer and its replay: one red SYM-2 episode, state in the changelog."""
    processor = _processor()
    records = [
        Record("m", 0, 0, P.encode(), _weight(80.0, T0 - timedelta(days=2))),
        Record("m", 0, 1, P.encode(), _weight(82.4, T0)),
        Record(
            "a",
            0,
            0,
            P.encode(),
            msgspec.json.encode(_answer(T0 + timedelta(hours=1), "hf-daily", "swelling")),
        ),
        Record(
            "a",
            0,
            0,
            P.encode(),
            msgspec.json.encode(_answer(T0 + timedelta(hours=1), "hf-daily", "swelling")),
        ),
    ]
    processor.handle(records)
    out = processor.take()
    sym = [e for _k, e in out.events if e.rule_id.startswith("SYM")]
    assert [(e.rule_id, e.severity) for e in sym] == [("SYM-2", Severity.RED)]
    assert f"{P}|answers".encode() in out.changelog[0]
    assert out.offsets[("a", 0)] == 1


def test_the_batch_step_sets_aside_an_answer_keyed_by_someone_else() -> None:
    """An answer whose key is not its patient is quarantined, not applied."""
    processor = _processor()
    processor.handle([Record("a", 0, 0, b"OTHER", msgspec.json.encode(_answer(T0, "contact-request")))])
    out = processor.take()
    assert not out.events
    assert len(out.quarantined) == 1


def test_a_rule_the_plan_switched_off_raises_nothing() -> None:
    """rules_off: SYM-1 off silences a breathless answer; CONTACT-1 off a contact request; SYM-2 off
    leaves the symptom rule alone (SYM-1), not the combination."""
    s = _symptoms()
    a = _answer(T0, "hf-daily", "breathless")
    assert (
        s.answer(a, AnswerRecord(), weight_gain=None, systolic=None, now=T0, off=frozenset({"SYM-1"})) == []
    )
    contact = _answer(T0, "contact-request")
    assert (
        s.answer(
            contact, AnswerRecord(), weight_gain=None, systolic=None, now=T0, off=frozenset({"CONTACT-1"})
        )
        == []
    )
    gain = _gain(T0, T0)
    got = s.answer(a, AnswerRecord(), weight_gain=gain, systolic=None, now=T0, off=frozenset({"SYM-2"}))
    assert [e.rule_id for e in got or []] == ["SYM-1"]


def test_an_answer_sent_again_after_its_record_was_lost_opens_another_episode() -> None:
    """The answer record lost (found damaged and started again, or its episode pruned): the same
    answer in a later Kafka record is not recognised, and opens an episode. It must not be the old
    episode's id at version 1, which the response centre ignores (it keeps an id's highest version)
    along with every later change. The same record read again (a replay) gives the same id."""
    a = _answer(T0, "hf-daily", "breathless")
    (first,) = _symptoms().answer(a, AnswerRecord(), weight_gain=None, systolic=None, now=T0, offset=5) or []
    (replay,) = _symptoms().answer(a, AnswerRecord(), weight_gain=None, systolic=None, now=T0, offset=5) or []
    (resent,) = (
        _symptoms().answer(a, AnswerRecord(), weight_gain=None, systolic=None, now=T0, offset=90) or []
    )
    assert first.change is resent.change is EpisodeChange.OPENED
    assert replay.episode_id == first.episode_id
    assert resent.episode_id != first.episode_id


def test_sym2_opened_by_a_weight_reading_takes_the_readings_offset() -> None:
    """A weight reading that makes the gain plus symptoms SYM-2 opens the episode with its own
    Kafka offset (not the answer's): read again from the same record, the same id; the same
    reading in another record, another (found in review)."""

    def sym2(weight_offset: int) -> list[tuple[str, int]]:
        p = _processor()
        answer = _answer(T0 - timedelta(hours=1), "hf-daily", "swelling")
        p.handle([
            Record("m", 0, 0, P.encode(), _weight(80.0, T0 - timedelta(days=2))),
            Record("a", 0, 3, P.encode(), msgspec.json.encode(answer)),
            Record("m", 0, weight_offset, P.encode(), _weight(82.4, T0)),
        ])  # fmt: skip
        return [(e.episode_id, e.version) for _k, e in p.take().events if e.rule_id == "SYM-2"]

    first, replay, resent = sym2(1), sym2(1), sym2(9)
    assert len(first) == 1
    assert replay == first
    assert resent[0][0] != first[0][0]
