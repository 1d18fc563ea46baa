"""The batch step's part for questionnaire answers: which state an answer or a reading needs, read
from the batch's cache, and the answer rules (`symptoms.py`) run on it. Kept out of `batch.py` so
that one stays a readable size; the batch step owns the cache, the changelog and the events.

State: one `AnswerRecord` per patient under `<patient>|answers` (`ANSWERS`), beside the metric
records it reads (the weight record's weight-gain episode for SYM-2, the systolic history for SYM-3).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from contracts import AlertEvent, CarePlan, Measurement, QuestionnaireAnswer
from streams.monitor.engine import MetricRecord
from streams.monitor.episodes import EpisodeState, opener
from streams.monitor.history import History
from streams.monitor.state import ANSWERS, decode_metric_checked
from streams.monitor.symptoms import (
    BODY_WEIGHT,
    BP_SYSTOLIC,
    AnswerRecord,
    Symptoms,
    decode_answers,
)

__all__ = ["ANSWERS", "COMBINED_METRICS", "Answering"]

COMBINED_METRICS = frozenset({BODY_WEIGHT, BP_SYSTOLIC})  # readings the answer rules combine with
_WEIGHT = f"|{BODY_WEIGHT}".encode()
_SYSTOLIC = f"|{BP_SYSTOLIC}".encode()  # METRIC_KEYS[Metric.BP_SYSTOLIC] once the metric lands


class _Cache(Protocol):
    def get(self, partition: int, key: bytes, decode: Callable[[bytes], Any]) -> Any: ...
    def put(self, partition: int, key: bytes, value: Any) -> None: ...


class Answering:
    """Runs the answer rules for the batch step; returns the events (None: a replayed answer)."""

    def __init__(
        self, *, symptoms: Symptoms, cache: _Cache, plan: Callable[[int, bytes], CarePlan | None]
    ) -> None:
        self.symptoms, self.cache, self.plan = symptoms, cache, plan

    def answer(self, partition: int, a: QuestionnaireAnswer, offset: int) -> list[AlertEvent] | None:
        """An answer (checked and keyed right by the caller); the caller writes `<patient>|answers`."""
        patient = a.patient_id.encode()
        return self.symptoms.answer(
            a,
            self._answers(partition, patient),
            weight_gain=self._weight_gain(partition, patient),
            systolic=self._history(partition, patient + _SYSTOLIC),
            now=datetime.now(UTC),
            offset=offset,
            off=self._off(partition, patient),
        )

    def reading(self, partition: int, m: Measurement, record: MetricRecord, offset: int) -> list[AlertEvent]:
        """A new weight or systolic reading (already applied to `record`) of a patient who answers
        questionnaires: SYM-2, SYM-3. Events mean `<patient>|answers` changed. `offset`: the
        reading's in the measurement topic."""
        patient = m.patient_id.encode()
        answers = self.cache.get(partition, patient + ANSWERS, decode_answers)
        if not isinstance(answers, AnswerRecord) or not answers.recent:
            return []
        return self.symptoms.reading(
            m.patient_id,
            m.metric.value,
            m.measured_at.timestamp(),
            opener(m.measurement_id, offset),
            answers,
            history=record.history,
            weight_gain=record.episodes.get("weight_gain"),
            now=datetime.now(UTC),
            off=self._off(partition, patient),
        )

    def _answers(self, partition: int, patient: bytes) -> AnswerRecord:
        held = self.cache.get(partition, patient + ANSWERS, decode_answers)
        if not isinstance(held, AnswerRecord):
            held = AnswerRecord()
            self.cache.put(partition, patient + ANSWERS, held)
        return held

    def _off(self, partition: int, patient: bytes) -> frozenset[str]:
        plan = self.plan(partition, patient)
        return frozenset(plan.rules_off) if plan is not None else frozenset()

    def _weight_gain(self, partition: int, patient: bytes) -> EpisodeState | None:
        held = self.cache.get(partition, patient + _WEIGHT, decode_metric_checked)
        return held.episodes.get("weight_gain") if isinstance(held, MetricRecord) else None

    def _history(self, partition: int, key: bytes) -> History | None:
        held = self.cache.get(partition, key, decode_metric_checked)
        return held.history if isinstance(held, MetricRecord) else None
