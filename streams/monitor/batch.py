"""The monitor's batch step, without Kafka: records in; state changes, alert events and set-aside
records out. `worker.py` feeds it from Kafka and delivers what it returns, in the order the delivery
guarantee needs (changelog, store, events, offsets).

State is kept DECODED here, per key of the partitions this worker holds (`state.Cache`, bounded, the
least recently used first out): a patient's `PatientRecord` (key `<patient>|kit`), a `MetricRecord`
per metric (`<patient>|<metric>`) and its care plan (`<patient>|plan`, the plan's JSON as the
registry published it). A key the batch changed is encoded once, by `take`, however many of the
batch's records changed it; until the store has it, it stays in the cache (`take` evicts only keys
written out).

What persists (the engine-shell contract): the records the engine reports changed (`measurement`:
the metric record always, the patient record when `patient_changed` or it moved partition;
`status`: the patient record when `patient_changed`; `deadline`: the patient record and the metrics it
names) and the newest care plan, with the patient record when the plan moved its deadline earlier
(`replanned`). The engine may also move a record on in memory without saying so
(`last_seen` on a reading): only where the persisted records let it work that out again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from contracts import (
    DEFAULT_KIT_LANGUAGE,
    AlertEvent,
    CarePlan,
    KitCommandRequest,
    KitStatusEvent,
    Measurement,
    Quarantined,
    QuarantineReason,
    QuestionnaireAnswer,
    quarantined,
)
from streams.monitor.answering import ANSWERS, COMBINED_METRICS, Answering
from streams.monitor.checks import UnusableError, check_answer, check_key, check_measurement, check_status
from streams.monitor.clock import Clock
from streams.monitor.engine import (
    Engine,
    MetricRecord,
    Outcome,
    PatientRecord,
    encode,
)
from streams.monitor.metrics import MonitorMetrics
from streams.monitor.retry import Retries
from streams.monitor.state import (
    CACHED_KEYS,
    KIT,
    METRIC_KEYS,
    PLAN,
    SUFFIXES,
    Cache,
    Plan,
    believable,
    decode_kit,
    decode_metric_checked,
    decode_plan,
)
from streams.monitor.store import Store
from streams.monitor.symptoms import AnswerRecord, Symptoms, decode_answers, encode_answers
from streams.monitor.timers import Timer

__all__ = ["Batch", "Names", "Processor", "Record"]

log = logging.getLogger(__name__)

_measurement = msgspec.json.Decoder(Measurement)
_status = msgspec.json.Decoder(KitStatusEvent)
_answer = msgspec.json.Decoder(QuestionnaireAnswer)
_STAGE = "monitor"  # in the quarantine records it publishes


@dataclass(frozen=True, slots=True)
class Names:
    """The input topics, to tell records apart."""

    measurements: str
    status: str
    careplans: str
    answers: str = ""  # questionnaire answers; "" when the shell does not consume them


@dataclass(slots=True)
class Record:
    """One input record as Kafka gave it. `appended`: its LogAppendTime in seconds, if it has one."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    appended: float | None = None


@dataclass(slots=True)
class Batch:
    """What a batch step produced, to deliver in this order: `changelog` (per partition, key ->
    encoded state) and `quarantined`, then `events` (keyed by patient), then `offsets`."""

    changelog: dict[int, dict[bytes, bytes]] = field(default_factory=dict)
    quarantined: list[Quarantined] = field(default_factory=list)
    events: list[tuple[bytes, AlertEvent]] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)  # the next offset to read
    # reminders for the kits (keyed by patient), sent with the events: after the changelog
    commands: list[tuple[bytes, KitCommandRequest]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changelog or self.quarantined or self.events or self.offsets or self.commands)


class Processor:
    """The partitions a worker holds: their decoded state, event-time clocks and deadline heaps.

    `behind(topic, partition)`: whether that input still has records waiting that are neither
    handled nor held by the worker's merge (`merge.py`); it holds the partition's clock at that
    input's time. None (no merge, as in the unit tests): nothing waits, except the inputs `load`
    is told of, until their first record.
    """

    def __init__(
        self,
        *,
        engine: Engine,
        names: Names,
        store: Store,
        metrics: MonitorMetrics,
        behind: Callable[[str, int], bool] | None = None,
        cached: int = CACHED_KEYS,
    ) -> None:
        self.engine, self.names, self.store, self.metrics = engine, names, store, metrics
        self.symptoms = Symptoms(timing=engine.timing, shown_in=engine.shown_in)
        self.cache = Cache(store, cached, metrics)
        self.answering = Answering(symptoms=self.symptoms, cache=self.cache, plan=self._plan)
        self.behind = behind
        self._sources = {names.measurements: "measurements", names.status: "status"}
        self._topics = {source: topic for topic, source in self._sources.items()}
        self.clocks: dict[int, Clock] = {}
        self.timers: dict[int, Timer] = {}
        self.loaded: set[int] = set()
        self._latest: dict[int, float] = {}  # per partition, its latest believable time when loaded
        self.retries = Retries(metrics.deadline_failures)
        self._out = Batch()
        self._touched: dict[bytes, int] = {}  # keys changed since the last `take`, with their partition
        self._turn = 0

    # ------------------------------------------------------------------ partitions
    def load(self, partitions: Iterable[int], waiting: dict[int, set[str]] | None = None) -> None:
        """Rebuild the deadlines of these partitions (restored in the store) and announce their
        episodes. It must come before any of their records is handled: a replayed reading can move
        the clock days on and prune a resolved episode whose "resolved" event a crash lost, and then
        nothing would ever tell the nurse it was resolved.

        `waiting`: per partition, the clock inputs ("measurements", "status") with records waiting
        beyond the committed offset. They hold the clock (at no time: nothing fires) until their
        first record is read: else the first batch after a restart, holding the kit-status records
        and none of the readings yet, moved the clock to the end of the backlog and fired every
        deadline on the way ("measurement missed" for windows whose readings were still waiting).
        """
        now, m = datetime.now(UTC), self.metrics
        for partition in partitions:
            wakes: dict[bytes, float] = {}
            patients: dict[bytes, dict[bytes, bytes]] = {}
            for key, value in self.store.items(partition):
                cut = key.rfind(b"|")
                patients.setdefault(key[:cut], {})[key[cut:]] = value
            latest, rebuild = 0.0, []
            for patient, held in patients.items():
                try:
                    wake, seen_at = self._load_patient(partition, patient, held, now)
                except Exception as exc:  # a record that reads but holds what no version wrote
                    m.state_unreadable.labels("other").inc()
                    log.warning(
                        "a patient's stored state could not be announced (%s); its deadline is asked "
                        "again at the first tick",
                        type(exc).__name__,
                    )
                    log.debug("the patient whose state could not be announced: %r", patient, exc_info=True)
                    wakes[patient] = 0.0
                    continue
                if wake is None and patient + KIT in self.cache.unreadable:  # set by `_load_patient`
                    rebuild.append(patient)
                elif wake is not None:
                    wakes[patient] = wake
                latest = max(latest, *(believable(t) for t in seen_at))
            # Made again once the partition's latest time is known, and kept out of it: a record
            # made at any other time would move the clock (and find every other kit silent)
            self._latest[partition] = latest
            for patient in rebuild:
                wake = self._rebuilt(partition, patient).wake_at
                if wake is not None:
                    wakes[patient] = wake
            self.timers[partition] = Timer(wakes)
            self.clocks[partition] = clock = Clock()
            clock.start(latest)  # else a partition that gets no record has no clock
            for source in sorted((waiting or {}).get(partition, ())):
                # Its time is not known until its first record: the state's latest time may be a
                # fast kit's, ahead of readings of other kits still waiting (held there, the first
                # tick after the cohort test's restart found 80 kits "silent" whose readings waited).
                clock.see(source, 0.0, behind=True)
            self.loaded.add(partition)
        self.metrics.deadlines.set(sum(len(t) for t in self.timers.values()))

    def _load_patient(
        self, partition: int, patient: bytes, held: dict[bytes, bytes], now: datetime
    ) -> tuple[float | None, list[float]]:
        """Announce one patient's held episodes and due reminders; (its deadline, its event times)."""
        read = self.cache.read
        stored = (
            read(partition, patient + ANSWERS, held[ANSWERS], decode_answers) if ANSWERS in held else None
        )
        if stored is not None:
            answers = self.symptoms.announce(patient.decode(), stored, now=now)
            self._out.events.extend((patient, e) for e in answers)
        precord = read(partition, patient + KIT, held[KIT], decode_kit) if KIT in held else None
        if precord is None:  # none, or unreadable: made again by `load` once the clock's time is known
            precord = PatientRecord()
        episodes, seen_at = dict(precord.episodes), [precord.last_seen, precord.missed_checked]
        for suffix, raw in held.items():
            metric = SUFFIXES.get(suffix)
            record = (
                read(partition, patient + suffix, raw, decode_metric_checked) if metric is not None else None
            )
            if record is not None:
                episodes.update({f"{metric}:{k}": v for k, v in record.episodes.items()})
                seen_at.extend(q.t for q in record.history.recent[-1:])
        events = self.engine.announce(patient.decode(), episodes, now=now)
        self._out.events.extend((patient, e) for e in events)
        plan = self._plan(partition, patient)
        language = plan.language if plan is not None else DEFAULT_KIT_LANGUAGE
        self._out.commands.extend(
            (patient, c) for c in self.engine.reminders_due(patient.decode(), precord, language=language)
        )
        wake = precord.wake_at
        return (wake if wake is None or math.isfinite(wake) else 0.0), seen_at

    def drop(self, partitions: set[int]) -> None:
        """Forget these partitions (they went to another worker); what was handled is delivered."""
        assert not self._touched, "deliver the batch before partitions move"
        self.cache.drop(partitions)
        for partition in partitions:
            self.clocks.pop(partition, None)
            self.timers.pop(partition, None)
        self.loaded -= partitions

    # ------------------------------------------------------------------ the batch
    def handle(self, records: Iterable[Record]) -> None:
        """Evaluate records of loaded partitions, in order; a record that breaks its contract or the
        handler is set aside (issue #27): one record never stops the monitor."""
        names, metrics, offsets = self.names, self.metrics, self._out.offsets
        kinds = metrics.event_kinds
        for r in records:
            offsets[(r.topic, r.partition)] = r.offset + 1
            try:
                if r.topic == names.measurements:
                    kinds["measurement"].inc()
                    self._measurement(r)
                elif r.topic == names.status:
                    kinds["kit_status"].inc()
                    self._status(r)
                elif r.topic == names.answers:
                    kinds["answer"].inc()
                    self._answer(r)
                elif r.topic == names.careplans and r.value is not None:
                    kinds["careplan"].inc()
                    self._careplan(r)
            except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:  # TypeError: no value
                metrics.broken.inc()
                self._set_aside(r, QuarantineReason.UNDECODABLE, f"does not match its contract ({exc})")
            except UnusableError as exc:
                metrics.broken.inc()
                self._set_aside(r, QuarantineReason.INVALID, str(exc))
            except Exception as exc:  # a record that passed its contract and still broke the handler
                # the error's text may quote the record's values: in the traceback at debug level only
                log.error("the monitor's handler failed on a record (%s)", type(exc).__name__)
                log.debug("the handler's failure", exc_info=True)
                self._forget_unwritten(r.key)
                self._set_aside(r, QuarantineReason.HANDLER_FAILED, f"{type(exc).__name__}: {exc}")

    def take(self) -> Batch:
        """What the records and deadlines since the last call produced, state encoded once per key."""
        out, self._out = self._out, Batch()
        for key, partition in self._touched.items():
            held = self.cache.values[key][1]
            assert held is not None
            if isinstance(held, Plan):
                data = held.raw
            elif isinstance(held, AnswerRecord):
                data = encode_answers(held)
            else:
                data = encode(held)
            self.metrics.state_bytes.observe(len(data))
            out.changelog.setdefault(partition, {})[key] = data
            self.cache.written(key)
        self._touched.clear()
        self.cache.trim()
        return out

    # ------------------------------------------------------------------ state
    def _patient(self, partition: int, patient: bytes) -> PatientRecord:
        held = self.cache.get(partition, patient + KIT, decode_kit)
        if held is None:
            if patient + KIT in self.cache.unreadable:
                precord = self._rebuilt(partition, patient)
                self._schedule(partition, patient, precord.wake_at)
                return precord
            held = PatientRecord()
            self.cache.put(partition, patient + KIT, held)
        assert isinstance(held, PatientRecord)
        return held

    def _rebuilt(self, partition: int, patient: bytes) -> PatientRecord:
        """A patient record that could not be read, made again from what is known, so the patient
        stays in silence and missed-measurement detection: heard from at the latest reading kept
        (else at the partition's latest time when it was loaded: never the wall clock, which would
        count a worker's downtime as the kit's silence), windows judged up to then, its next
        deadline asked again and the record written with this batch. The kit-level episodes it held
        are not known any more (the response centre still shows them)."""
        heard = []
        for suffix in METRIC_KEYS.values():
            record = self.cache.get(partition, patient + suffix, decode_metric_checked)
            if isinstance(record, MetricRecord) and record.history.recent:
                heard.append(believable(record.history.recent[-1].t))
        clk = self.clocks.get(partition) if partition in self.loaded else None  # loading: no clock yet
        known = max(clk.now() if clk is not None else 0.0, self._latest.get(partition, 0.0))
        # the wall clock only for a partition that has no time at all (it then has no clock either)
        last = max(heard, default=0.0) or known or time.time()
        precord = PatientRecord(partition=partition, last_seen=last, missed_checked=last)
        self.engine.rewake(precord, self._plan(partition, patient))
        self.cache.put(partition, patient + KIT, precord)
        self._touch(partition, patient + KIT)
        return precord

    def _metric(self, partition: int, key: bytes) -> MetricRecord:
        held = self.cache.get(partition, key, decode_metric_checked)
        if held is None:
            held = MetricRecord()
            self.cache.put(partition, key, held)
        assert isinstance(held, MetricRecord)
        return held

    def _plan(self, partition: int, patient: bytes) -> CarePlan | None:
        held = self.cache.get(partition, patient + PLAN, decode_plan)
        return held.plan if isinstance(held, Plan) else None

    def _touch(self, partition: int, key: bytes) -> None:
        self._touched[key] = partition

    def _forget_unwritten(self, patient: bytes | None) -> None:
        """After a handler failed: the engine may have changed the patient's records half way. Those
        the batch has not changed otherwise are read again from the store (the others keep their
        half-done change, written with the batch: rare, and never worse than the record's effect)."""
        if patient is None:
            return
        for suffix in (KIT, PLAN, ANSWERS, *METRIC_KEYS.values()):
            if patient + suffix not in self._touched:
                self.cache.values.pop(patient + suffix, None)

    # ------------------------------------------------------------------ clocks
    def _seen(self, r: Record, source: str, t: float) -> Clock:
        clk = self.clocks.setdefault(r.partition, Clock())
        clk.see(source, t, behind=self.behind is not None and self.behind(r.topic, r.partition))
        self._refresh(r.partition, clk)
        return clk

    def _refresh(self, partition: int, clk: Clock) -> None:
        """Note which of the partition's inputs still have records waiting. Their flags change
        without a record of theirs being handled (a record fetched and held by the merge; the end of
        a backlog reached), so a status lane held at its last record would otherwise hold the
        clock days back while the readings catch up, and no deadline would fire on the way."""
        if self.behind is None:
            return
        for source, held in clk.inputs.items():
            topic = self._topics.get(source)
            if topic is not None:
                held.behind = self.behind(topic, partition)

    def _passed(self, r: Record) -> None:
        """A record of a clock input handled without an event time (set aside): note whether others
        still wait, or the input stays held at the last one with a time, however long nothing comes."""
        clk = self.clocks.get(r.partition)
        if clk is None:
            return
        if self.behind is not None:
            self._refresh(r.partition, clk)
            return
        held = clk.inputs.get(self._sources.get(r.topic, ""))
        if held is not None:  # no merge to ask: nothing waits
            held.behind = False

    def _timer(self, partition: int) -> Timer:
        timer = self.timers.get(partition)
        if timer is None:  # not setdefault: that would build a Timer on every call
            timer = self.timers[partition] = Timer()
        return timer

    def _schedule(self, partition: int, patient: bytes, wake: float | None) -> None:
        self._timer(partition).ask(patient, wake)

    # ------------------------------------------------------------------ handlers
    def _measurement(self, r: Record) -> None:
        m = check_measurement(_measurement.decode(r.value))  # type: ignore[arg-type]  # None: TypeError
        check_key(r.key, m.patient_id, "reading")
        partition = r.partition
        patient = m.patient_id.encode()
        mkey = patient + METRIC_KEYS[m.metric]
        precord = self._patient(partition, patient)
        record = self._metric(partition, mkey)
        clk = self._seen(r, "measurements", m.measured_at.timestamp())
        now = datetime.now(UTC)
        appended_at = None if r.appended is None else datetime.fromtimestamp(r.appended, UTC)
        trace = msgspec.structs.replace(m.trace, kafka_appended=appended_at, monitor_processed=now)
        out = self.engine.measurement(
            m,
            record,
            precord,
            self._plan(partition, patient),
            clock=clk.now(holding="measurements"),
            now=now,
            trace=trace,
            offset=r.offset,
        )
        if out.duplicate:
            self.metrics.duplicates.inc()
            return
        self._touch(partition, mkey)
        self._after(partition, patient, precord, out)
        if m.metric.value in COMBINED_METRICS and (
            events := self.answering.reading(partition, m, record, r.offset)
        ):
            self._touch(partition, patient + ANSWERS)
            self._out.events.extend((patient, e) for e in events)
        if r.appended:
            self.metrics.latency.observe(max(0.0, time.time() - r.appended))

    def _answer(self, r: Record) -> None:
        """A questionnaire answer: the answer rules, with the patient's weights and systolic pressures."""
        a = check_answer(_answer.decode(r.value))  # type: ignore[arg-type]  # None: TypeError
        check_key(r.key, a.patient_id, "answer")
        events = self.answering.answer(r.partition, a, r.offset)
        if events is None:
            self.metrics.duplicates.inc()
            return
        patient = a.patient_id.encode()
        self._touch(r.partition, patient + ANSWERS)
        self._out.events.extend((patient, e) for e in events)

    def _after(self, partition: int, patient: bytes, precord: PatientRecord, out: Outcome) -> None:
        if out.patient_changed or precord.partition != partition:
            precord.partition = partition
            self._touch(partition, patient + KIT)
            self._schedule(partition, patient, precord.wake_at)
        self._out.events.extend((patient, e) for e in out.events)
        self._out.commands.extend((patient, c) for c in out.commands)

    def _status(self, r: Record) -> None:
        event = check_status(_status.decode(r.value))  # type: ignore[arg-type]  # None: TypeError
        clk = self._seen(r, "status", event.at.timestamp())
        if event.patient_id is None:
            return  # a kit nobody has: the registry's concern, not a patient's
        check_key(r.key, event.patient_id, "kit status")
        patient = event.patient_id.encode()
        precord = self._patient(r.partition, patient)
        self._silence_ends(r.partition, patient, precord, min(clk.now(), event.at.timestamp()))
        precord = self._patient(r.partition, patient)  # again: a deadline that failed forgot the record
        out = self.engine.status(event, precord, self._plan(r.partition, patient), now=datetime.now(UTC))
        self._after(r.partition, patient, precord, out)

    def _silence_ends(self, partition: int, patient: bytes, precord: PatientRecord, clock: float) -> None:
        """A kit heard from after a silence the clock has passed: run its deadline first, or the
        status message hides the silence it ends. Catching up, the loop's tick comes only after a
        batch of days: a kit's "offline" goodbye stamped at the end, handled before the tick, moved
        `last_seen` on and the silent kit was never found (the cohort test). `clock`: no later than
        the message's own time (the partition's clock follows the fastest of the kits' connections).
        Only a silent kit's: a deadline run at every heartbeat judged measuring windows whose
        readings were still on the way (3x the "measurement missed" episodes in the cohort test)."""
        if precord.wake_at is None or precord.wake_at > clock:
            return
        seen = [precord.last_seen]  # as `Engine.deadline` takes it
        for suffix in METRIC_KEYS.values():
            recent = self._metric(partition, patient + suffix).history.recent
            if recent:
                seen.append(recent[-1].t)
        if clock >= max(seen) + self.engine.silent_after_s:
            self._fire(partition, patient, precord, clock, datetime.now(UTC))

    def _careplan(self, r: Record) -> None:
        assert r.value is not None
        held = decode_plan(r.value)
        plan = held.plan
        if r.key is None:
            raise TypeError("a care plan without a key (the patient)")
        check_key(r.key, plan.patient_id, "care plan")
        current = self._plan(r.partition, r.key)
        if current is not None and current.version > plan.version:
            return  # an older version replayed: the newer one stays in force
        self.cache.put(r.partition, r.key + PLAN, held)
        self._touch(r.partition, r.key + PLAN)
        precord = self._patient(r.partition, r.key)
        if self.engine.replanned(precord, plan):
            self._touch(r.partition, r.key + KIT)
        self._schedule(r.partition, r.key, precord.wake_at)

    def _set_aside(self, r: Record, reason: QuarantineReason, detail: str) -> None:
        self.metrics.quarantined.labels(reason.value).inc()
        self._passed(r)
        log.warning(
            "quarantined a record on %s[%d]@%d (%s) and skipped it",
            r.topic,
            r.partition,
            r.offset,
            reason.value,
        )
        self._out.quarantined.append(
            quarantined(
                stage=_STAGE,
                reason=reason,
                detail=detail,
                topic=r.topic,
                partition=r.partition,
                offset=r.offset,
                raw=r.value,
            )
        )

    # ------------------------------------------------------------------ deadlines
    def deadlines(self, partitions: Iterable[int] | None = None, *, budget_s: float | None = None) -> bool:
        """Fire what is due on each loaded partition's event-time clock (kit silent, measurement
        missed, all-clear); `partitions`: only those. With `budget_s`, stop once that much time is
        spent and return True: the rest is due as much on the next call, and the readings waiting
        meanwhile are not held up (a second's deadlines at once held alerts up by 0.7 s at 1,000
        readings/s in the benchmark)."""
        stop_at = None if budget_s is None else time.monotonic() + budget_s
        chosen = sorted(self.loaded if partitions is None else set(partitions) & self.loaded)
        self._turn += 1  # start at another partition each call, so none waits behind the others
        left = False
        for i in range(len(chosen)):
            left = self._deadlines(chosen[(self._turn + i) % len(chosen)], stop_at)
            if left:
                break
        self.metrics.deadlines.set(sum(len(t) for t in self.timers.values()))
        return left

    def _deadlines(self, partition: int, stop_at: float | None) -> bool:
        clk = self.clocks.get(partition)
        if clk is not None:
            self._refresh(partition, clk)
        now_event = clk.now() if clk is not None else 0.0
        if not now_event:
            return False
        timer = self._timer(partition)
        now = datetime.now(UTC)
        while True:
            if stop_at is not None and time.monotonic() > stop_at:
                return timer.due(now_event)
            due = timer.pop(now_event)
            if due is None:
                return False
            _asked, patient = due
            precord = self._patient(partition, patient)
            if precord.wake_at is None or precord.wake_at > now_event:
                self._schedule(partition, patient, precord.wake_at)  # it moved on since it was asked
                continue
            self._fire(partition, patient, precord, now_event, now)

    def _fire(
        self, partition: int, patient: bytes, precord: PatientRecord, clock: float, now: datetime
    ) -> None:
        """Run one patient's deadline on `clock` (the partition's event time)."""
        held = {m: self._metric(partition, patient + s) for m, s in METRIC_KEYS.items()}
        plan = self._plan(partition, patient)
        try:
            out, changed = self.engine.deadline(patient.decode(), precord, held, plan, clock=clock, now=now)
        except Exception as exc:  # one patient's: not the others' deadlines, nor its own for good
            self._forget_unwritten(patient)
            self._schedule(partition, patient, self.retries.failed(patient, clock, exc))
            return
        self.retries.done(patient)
        for metric in changed:
            self._touch(partition, patient + METRIC_KEYS[metric])
        self._touch(partition, patient + KIT)
        self._schedule(partition, patient, precord.wake_at)
        self._out.events.extend((patient, e) for e in out.events)
        self._out.commands.extend((patient, c) for c in out.commands)
