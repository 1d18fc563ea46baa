"""The bridge: MQTT in, canonical records to Kafka, PUBACK and delivery receipt once Kafka has them.

Three threads, none of which waits on another's I/O:

    network  (Subscriber.poll)  the MQTT socket: queue each message for the worker; PUBACK in order
                                 what Kafka holds; publish delivery receipts
    worker   (Bridge._work)      normalise (the pure core), encode, hand records to the producer;
                                 waits when `max_pending` records are unacknowledged (backpressure)
    kafka    (RecordSink)        librdkafka's delivery reports, served by the sink's poll thread:
                                 count down each message's records

The delivery guarantee (docs/bridge.md, "Delivery guarantee"): a kit's QoS-1 message is acknowledged to the
broker only after Kafka (acks=all, idempotent producer) holds every record made from it, valid or
rejected. While Kafka is away nothing is acknowledged; the broker keeps the messages for the
bridge's persistent session and stops sending once its in-flight window is full. A crash of the
bridge loses nothing: the broker sends the unacknowledged messages again, and the measurement id
makes the resulting repeats recognisable downstream.
"""

from __future__ import annotations

import collections
import itertools
import logging
import secrets
import threading
import time
from datetime import timedelta
from typing import Any

import msgspec

from contracts import MAX_KIT_PAYLOAD_BYTES, ReadingOutcome, ReceiptEntry, RejectReason, fhir_digest, topics
from contracts.kafka_acl import bridge_command_group, bridge_memory_group
from ingest._errors import BridgeError
from ingest.answers import AnswerReader
from ingest.command_relay import DRAIN_S, CommandMemory, CommandRelay
from ingest.envelope import Outcome, payload_rejection
from ingest.fair_share import KitLimiter, OncePer, fhir_cost, message_cost
from ingest.kit_commands import KnownCommands, check_ack
from ingest.metrics import BridgeMetrics
from ingest.normaliser import Normaliser
from ingest.outgoing import Record, records_of
from ingest.producer import RecordSink
from ingest.registry import Registry, RegistryCache
from ingest.settings import BridgeSettings
from ingest.subscriber import Inbound, Subscriber
from runtime.ops import OpsServer, health_status, serve
from runtime.settings import DatabaseSettings, KafkaSettings, MqttSettings

__all__ = ["Bridge"]

log = logging.getLogger(__name__)

_RESEND_BACKOFF = 2.0  # seconds before a record Kafka refused is sent again
_REFUSAL_LOG_EVERY = 1.0  # seconds: at most one warning about refused records in this time
_RATE_LIMITED = ReadingOutcome(rejected=RejectReason.RATE_LIMITED.value)
_RATE_LIMITED_FHIR = ReadingOutcome(
    rejected=RejectReason.RATE_LIMITED.value,
    detail="the kit sent more than its fair share of readings a minute; send this again later",
)
_FHIR_REFUSAL_EVERY = 60.0  # seconds: at most one rate_limited rejection record per kit in this time


class Bridge:
    def __init__(
        self,
        *,
        mqtt: MqttSettings,
        kafka: KafkaSettings,
        database: DatabaseSettings,
        settings: BridgeSettings,
    ) -> None:
        self.settings = settings
        self.metrics = BridgeMetrics()
        self._mqtt, self._kafka, self._database = mqtt, kafka, database
        self._topics = {
            "measurement": topics.measurement_topic(kafka.topic_prefix),
            "rejection": topics.rejection_topic(kafka.topic_prefix),
            "status": topics.kit_status_topic(kafka.topic_prefix),
            "answer": topics.answer_topic(kafka.topic_prefix),
            "ack": topics.kit_ack_topic(kafka.topic_prefix),
        }
        self.registry = RegistryCache(
            database_url=database.url, refresh_interval=settings.registry_refresh_s, on_load=self._loaded
        )
        ahead, age = timedelta(seconds=settings.max_clock_ahead_s), timedelta(days=settings.max_age_days)
        self.normaliser = Normaliser(registry=self._snapshot, max_clock_ahead=ahead, max_age=age)
        self.answer_reader = AnswerReader(registry=self._snapshot, max_clock_ahead=ahead, max_age=age)
        self.subscriber = Subscriber(
            mqtt_settings=mqtt,
            client_id=settings.client_id,
            share_group=settings.share_group,
            receipts=settings.receipts,
            receipt_interval=settings.receipt_interval_ms / 1000,
            receive_maximum=settings.receive_maximum,
            deliver=self._enqueue,
            metrics=self.metrics,
            root=settings.topic_root,
        )
        # Fair share. A refused readings message is answered rate_limited and the kit resends it; that
        # needs receipts, so without them readings are not limited. Status and FHIR messages have no
        # receipt either way and are limited always: a refused status message is dropped (the next
        # heartbeat replaces it), a refused FHIR one recorded as a rate_limited rejection (at most one
        # per kit per minute, so that a flood of refusals is no flood of records).
        self.limiter = KitLimiter(
            readings_per_minute=settings.kit_readings_per_minute,
            readings_burst=settings.kit_readings_burst,
            bytes_per_minute=settings.kit_bytes_per_minute,
            bytes_burst=settings.kit_bytes_burst,
        )
        self._limited_channels = frozenset(
            ("readings", "status", "fhir", "answers", "acks")
            if settings.receipts
            else ("status", "fhir", "acks")
        )
        self.commands = self._command_relay(kafka, settings)
        self._fhir_refusals = OncePer(_FHIR_REFUSAL_EVERY)
        self._refused: collections.Counter[str] = collections.Counter()  # by channel, and fhir_unrecorded
        self._limited_readings = 0
        self.sink: RecordSink | None = None
        self.stop_requested = threading.Event()
        self._inbox: collections.deque[Inbound] = collections.deque()
        self._inbox_ready = threading.Event()
        self._worker_idle = False
        self._resend: collections.deque[tuple[float, Inbound, Record]] = collections.deque()
        # Counted on the hot path as plain integers (one writer each) and handed to the Prometheus
        # metrics once a second: a labelled metric takes a lock per call.
        self._handed = 0  # worker: records handed to the producer
        self._settled = 0  # the sink's poll thread: records Kafka acknowledged
        self._produce_errors = 0
        # the sink's poll thread: (_produce_errors, when) at the last warning
        self._refusals_logged = (0, 0.0)
        self._received: collections.Counter[str] = collections.Counter()
        self._redelivered = 0
        self._produced: collections.Counter[str] = collections.Counter()
        self._latencies: collections.deque[float] = collections.deque()
        self._exported: dict[str, int] = {}
        self._span_prefix = secrets.token_hex(4)
        self._span_counter = itertools.count()
        self._worker = threading.Thread(target=self._work, name="bridge-worker", daemon=True)
        self._ops: OpsServer | None = None
        self._encoder = msgspec.json.Encoder()
        self._worker_error: BaseException | None = None

    def _command_relay(self, kafka: KafkaSettings, settings: BridgeSettings) -> CommandRelay:
        """Commands to the kits, Kafka -> MQTT; the commands any bridge sent check the kits' acks."""
        self.known_commands = KnownCommands()
        # a bridge under a test's topic prefix gets a group under it too (contracts.kafka_acl)
        group = settings.command_group or bridge_command_group(kafka.topic_prefix)
        self.command_memory = CommandMemory(
            kafka=kafka,
            group=bridge_memory_group(group),
            client_id=settings.client_id,
            lookback=timedelta(hours=settings.command_lookback_h),
            known=self.known_commands,
        )
        return CommandRelay(
            kafka=kafka,
            group=group,
            client_id=settings.client_id,
            root=settings.topic_root,
            registry=lambda: self.registry.current,
            publish=self.subscriber.relay,
            known=self.known_commands,
        )

    # ------------------------------------------------------------ start and stop
    def start(self) -> None:
        """Connect to PostgreSQL, Kafka and MQTT (waiting up to the start-up timeout), then take messages."""
        timeout = self.settings.startup_timeout_s
        self._ops = serve(
            host=self.settings.metrics_host,
            port=self.settings.metrics_port,
            port_env="VAKTROM_BRIDGE_METRICS_PORT",
            exposition=self.metrics.exposition,
            health=self.health,
        )
        self.registry.start()
        if not self.registry.wait_loaded(timeout):
            raise BridgeError(
                f"cannot read the kit registry from PostgreSQL within {timeout:.0f} s "
                f"({self.registry.last_error or 'no answer'}). Is it running and migrated "
                "(`make stack-up`)? VAKTROM_DATABASE_URL says where it is.",
                retriable=True,
            )
        self.sink = RecordSink(kafka=self._kafka, bridge=self.settings, topics=list(self._topics.values()))
        self._worker.start()
        self.subscriber.connected_event(self.stop_requested, timeout)
        self.command_memory.start()
        self.commands.start()
        log.info(
            "bridge %s: taking kit messages from %s (group %s), producing to %s",
            self.settings.client_id,
            f"{self._mqtt.host}:{self._mqtt.port}",
            self.settings.share_group,
            self._kafka.bootstrap,
        )

    def run(self) -> None:
        """The network loop, until `stop()`; then drain what Kafka accepts and disconnect cleanly."""
        last_report = time.monotonic()
        while not self.stop_requested.is_set():
            if self.subscriber.fatal is not None:
                raise self.subscriber.fatal
            if self._worker_error is not None:
                raise BridgeError(f"the worker failed: {self._worker_error!r}", retriable=True)
            for name, part in (("relay", self.commands), ("memory", self.command_memory)):
                if part.error is not None:
                    raise BridgeError(f"the command {name} failed: {part.error!r}", retriable=True)
            if self.sink is not None and not self.sink.alive:
                raise BridgeError("the Kafka delivery-report thread stopped (a bug)", retriable=True)
            self.subscriber.poll(0.05)
            now = time.monotonic()
            if now - last_report >= 1.0:
                last_report = now
                self._gauges()
        self._shutdown()

    def stop(self) -> None:
        self.stop_requested.set()
        self._inbox_ready.set()

    def _shutdown(self) -> None:
        log.info("bridge: stopping; letting Kafka acknowledge what it has")
        self.command_memory.request_stop()
        self.commands.request_stop()
        deadline = time.monotonic() + DRAIN_S + 1  # the broker's acks of commands in flight come in here
        while self.commands.running and time.monotonic() < deadline:
            self.subscriber.poll(0.05)
        self.commands.join(timeout=10)
        self.command_memory.join(timeout=10)
        self._worker.join(timeout=10)
        if self.sink is not None:
            self.sink.flush(timeout=10)
        deadline = time.monotonic() + 2
        while self.subscriber.completed and time.monotonic() < deadline:
            self.subscriber.poll(0.01)
        self.subscriber.close(timeout=2)
        if self.sink is not None:
            self.sink.close()
        self.registry.stop()
        if self._ops is not None:
            self._ops.stop()
        log.info("bridge: stopped")

    # ------------------------------------------------------------ registry
    def _snapshot(self) -> Registry:
        current = self.registry.current
        assert current is not None  # the worker starts only once the registry has loaded
        return current

    def _loaded(self, registry: Registry) -> None:
        self.metrics.registry_kits.set(len(registry.kits))
        log.info("registry: %d kits loaded", len(registry.kits))

    # ------------------------------------------------------------ network thread -> worker
    def _enqueue(self, inbound: Inbound) -> None:
        """On the network thread: hand the message over; no lock, no syscall unless the worker sleeps."""
        self._received[inbound.channel or "other"] += 1
        if inbound.dup:
            self._redelivered += 1
        self._inbox.append(inbound)
        if self._worker_idle:
            self._inbox_ready.set()

    # ------------------------------------------------------------ worker
    def _work(self) -> None:
        inbox = self._inbox
        try:
            while not self.stop_requested.is_set():
                if self._resend:
                    self._resend_due()
                if not inbox:
                    self._worker_idle = True
                    self._inbox_ready.wait(0.05)
                    self._inbox_ready.clear()
                    self._worker_idle = False
                    continue
                while inbox:
                    if self.stop_requested.is_set():
                        return  # not acknowledged: the broker sends it again to the next session
                    if self._resend:  # a steady flood keeps the inbox full: resends must not wait for a lull
                        self._resend_due()
                    self._process(inbox.popleft())
        except BaseException as exc:  # a bug: stop the bridge loudly rather than stall silently
            log.exception("bridge worker failed")
            self._worker_error = exc

    def _process(self, inbound: Inbound) -> None:
        roomy = False
        if inbound.channel in self._limited_channels:
            share = self._within_share(inbound)
            if share is None:
                return
            roomy = share
        try:
            outcome = self._normalise(inbound)
        except Exception:  # a bug in the core: keep the payload for operators, answer the kit, go on
            log.exception(
                "bridge: failed on a payload from topic channel %r; sent to rejections", inbound.channel
            )
            outcome = self._internal_error(inbound)
        if roomy:  # let through on a full enough bucket; its cost is known now
            count = len(outcome.measurements) + len(outcome.rejections) + len(outcome.answers)
            self.limiter.charge(inbound.kit_id, count, len(inbound.payload))
        self._emit(inbound, outcome)

    def _emit(self, inbound: Inbound, outcome: Outcome) -> None:
        """Hand the message's records to the producer; the last one Kafka acknowledges settles it."""
        inbound.receipt = outcome.receipt
        inbound.started = time.monotonic()
        self._wait_for_room(outcome.record_count)
        records = self._records(
            outcome, inbound
        )  # after the wait: the trace's bridge_produced is the hand-over
        inbound.remaining = len(records)
        for record in records:
            self._send(inbound, record)

    def _within_share(self, inbound: Inbound) -> bool | None:
        """Whether the message is within its kit's fair share: True when the kit's buckets hold
        enough for any message (charge it after normalising: no second parse on the common path),
        False when its cost was read and taken here, None when it was refused (and dealt with).

        A refused readings message makes no record at all (it is neither stored nor a rejection): its
        PUBACK goes out in order and its receipt tells the kit to keep it and send it again later.
        A status message costs one reading, known without reading it; refused, it is dropped.
        """
        limiter, kit, now = self.limiter, inbound.kit_id, time.monotonic()
        if inbound.channel in ("status", "acks"):
            if limiter.allow(kit, 1, min(len(inbound.payload), MAX_KIT_PAYLOAD_BYTES), now):
                return False
            self._refused[inbound.channel] += 1
            self._settle_unrecorded(inbound)
            return None
        if limiter.roomy(kit, now):
            return True
        if inbound.channel == "fhir":
            return self._fhir_within_share(inbound, now)
        seq, readings, size = message_cost(inbound.payload)
        if limiter.allow(kit, readings, size, now):
            return False
        self._refused["readings"] += 1
        self._limited_readings += readings
        if seq is not None:
            inbound.receipt = ReceiptEntry(seq=seq, readings=[_RATE_LIMITED] * readings)
        self._settle_unrecorded(inbound)
        return None

    def _fhir_within_share(self, inbound: Inbound, now: float) -> bool | None:
        """A FHIR message from a kit near its limit: its entries counted cheaply; refused, it becomes
        one rate_limited rejection of the whole message (the first in a minute) or only a count."""
        readings, size = fhir_cost(inbound.payload)
        if self.limiter.allow(inbound.kit_id, readings, size, now):
            return False
        self._refused["fhir"] += 1
        receipt = ReceiptEntry(fhir=fhir_digest(inbound.payload), readings=[_RATE_LIMITED_FHIR])
        if self._fhir_refusals.due(inbound.kit_id, now):
            outcome = self._fhir_refusal(inbound)
            outcome.receipt = receipt
            self._emit(inbound, outcome)
        else:
            self._refused["fhir_unrecorded"] += 1
            inbound.receipt = receipt
            self._settle_unrecorded(inbound)
        return None

    def _fhir_refusal(self, inbound: Inbound) -> Outcome:
        s = self.settings
        return _whole_rejection(
            inbound,
            RejectReason.RATE_LIMITED,
            f"the kit sent more than its fair share ({s.kit_readings_per_minute:,} readings and "
            f"{s.kit_bytes_per_minute:,} bytes a minute); this FHIR message was not taken, nor are "
            f"the kit's further ones over its share in the next {_FHIR_REFUSAL_EVERY:.0f} s (only "
            "counted: vaktrom_bridge_rate_limited_fhir_messages). Have the gateway send less often "
            "and resend what was refused, or raise VAKTROM_BRIDGE_KIT_READINGS_PER_MINUTE",
        )

    def _settle_unrecorded(self, inbound: Inbound) -> None:
        """A message that makes no record: acknowledge it at once, in order (with its receipt, if any)."""
        inbound.remaining = 0
        inbound.done = True
        self.subscriber.completed.append(inbound)
        self.subscriber.wake()

    def _normalise(self, inbound: Inbound) -> Outcome:
        args = (inbound.topic, inbound.kit_id, inbound.payload, inbound.received_at)
        if inbound.channel == "readings":
            return self.normaliser.readings(*args)
        if inbound.channel == "status":
            return self.normaliser.status(*args)
        if inbound.channel == "fhir":
            return self.normaliser.fhir(*args)
        if inbound.channel == "answers":
            return self.answer_reader.answers(*args)
        if inbound.channel == "acks":
            # at start, until the bridges' earlier commands are remembered (the start-up timeout in
            # all, not per ack: a flood of acks would otherwise hold every kit's readings)
            self.command_memory.wait_ready(self.settings.startup_timeout_s)
            return check_ack(
                topic=inbound.topic, kit_id=inbound.kit_id, payload=inbound.payload,
                received_at=inbound.received_at, known=self.known_commands, registry=self.registry.current,
            )  # fmt: skip
        raise ValueError(f"no handler for channel {inbound.channel!r}")

    def _internal_error(self, inbound: Inbound) -> Outcome:
        return _whole_rejection(
            inbound,
            RejectReason.INTERNAL_ERROR,
            "the bridge failed on this payload (a bug, logged for operators); it is kept here",
        )

    def _records(self, outcome: Outcome, inbound: Inbound) -> list[Record]:
        # W3C trace context: the trace id is the record's own id, the span this bridge's handling of
        # the message (a process prefix and a counter: unique, and no random bytes on the hot path)
        span = f"{self._span_prefix}{next(self._span_counter) & 0xFFFFFFFF:08x}"
        if outcome.measurements:
            kit_sent = outcome.measurements[0].trace.kit_sent
            if kit_sent is not None:
                lag = max(0.0, (inbound.received_at - kit_sent).total_seconds())
                self.metrics.delivery_lag.observe(lag)
        for r in outcome.rejections:
            self.metrics.rejected.labels(r.reason.value).inc()
        return records_of(outcome, self._topics, span, self._encoder.encode)

    @property
    def pending(self) -> int:
        """Records handed to the producer and not yet settled (each counter has a single writer)."""
        return self._handed - self._settled

    def _wait_for_room(self, count: int) -> None:
        """Backpressure: while too many records wait for Kafka, take no more messages."""
        while self.pending + count > self.settings.max_pending and not self.stop_requested.is_set():
            if self.pending == 0:
                return  # one message bigger than the whole allowance still goes
            # Records Kafka gave up on (an outage longer than the delivery timeout) count as pending
            # until sent again and acknowledged; only this thread resends them, so it must here, or
            # a full allowance of them would hold the bridge for good.
            if self._resend:
                self._resend_due()
            time.sleep(0.005)

    def _send(self, inbound: Inbound, record: Record) -> None:
        """Hand one record to the producer, retrying while Kafka cannot even take it (metadata away)."""
        assert self.sink is not None
        self._handed += 1

        def done(error: BaseException | None) -> None:
            self._record_done(inbound, record, error)

        while True:
            try:
                self.sink.send(record.topic, record.key, record.value, record.headers, done)
                return
            except Exception as exc:  # BufferError, KafkaException: librdkafka cannot queue it; keep trying
                if self.stop_requested.is_set():
                    self._handed -= 1
                    return
                log.warning("kafka: cannot queue a record (%s); retrying", type(exc).__name__)
                time.sleep(0.5)

    def _record_done(self, inbound: Inbound, record: Record, error: BaseException | None) -> None:
        """On the sink's poll thread: count down; the last record of a message makes it acknowledgeable.

        Delivery reports run only on that one thread, so `remaining` and `_settled` have one writer
        each and need no lock.
        """
        if error is not None:
            self._produce_errors += 1
            now = time.monotonic()
            logged, when = self._refusals_logged
            # an outage longer than the delivery timeout fails every pending record at once: one
            # line a second says so, not one per record (their count is vaktrom_bridge_produce_errors)
            if now - when >= _REFUSAL_LOG_EVERY:
                log.warning(
                    "kafka: %d records not accepted since the last report (%s, e.g. a %s record); "
                    "sending them again",
                    self._produce_errors - logged,
                    error,
                    record.kind,
                )
                self._refusals_logged = (self._produce_errors, now)
            self._resend.append((now + _RESEND_BACKOFF, inbound, record))
            return
        self._settled += 1
        self._produced[record.kind] += 1
        inbound.remaining -= 1
        if inbound.remaining == 0:
            self._latencies.append(time.monotonic() - inbound.started)
            inbound.done = True
            self.subscriber.completed.append(inbound)
            self.subscriber.wake()

    def _resend_due(self) -> None:
        now = time.monotonic()
        while self._resend and self._resend[0][0] <= now:
            _, inbound, record = self._resend.popleft()
            self._handed -= 1  # it was counted when first handed over
            self._send(inbound, record)

    # ------------------------------------------------------------ operations
    def _gauges(self) -> None:
        """Once a second: move the hot-path counts into the Prometheus metrics."""
        m = self.metrics
        self._export("redelivered", self._redelivered, m.redelivered)
        self._export("produce_errors", self._produce_errors, m.produce_errors)
        refused = self._refused
        self._export("rate_limited", refused["readings"], m.rate_limited)
        self._export("rate_limited_readings", self._limited_readings, m.rate_limited_readings)
        self._export("rate_limited_status", refused["status"], m.rate_limited_status)
        self._export("rate_limited_fhir", refused["fhir"], m.rate_limited_fhir)
        self._export(
            "rate_limited_fhir_unrecorded", refused["fhir_unrecorded"], m.rate_limited_fhir_unrecorded
        )
        m.limited_kits.set(len(self.limiter))
        for channel, count in list(self._received.items()):
            self._export(f"received:{channel}", count, m.received.labels(channel))
        for kind, count in list(self._produced.items()):
            self._export(f"produced:{kind}", count, m.produced.labels(kind))
        while self._latencies:
            m.kafka_latency.observe(self._latencies.popleft())
        count, age = self.subscriber.unacknowledged()
        m.in_flight.set(count)
        m.oldest_unacked.set(age)
        m.pending.set(self.pending)
        current = self.registry.current
        if current is not None:
            m.registry_age.set(time.monotonic() - current.loaded_at)

    def _export(self, name: str, total: int, counter: Any) -> None:
        delta = total - self._exported.get(name, 0)
        if delta > 0:
            counter.inc(delta)
            self._exported[name] = total

    def health(self) -> dict[str, Any]:
        count, age = self.subscriber.unacknowledged()
        current = self.registry.current
        registry_age = None if current is None else time.monotonic() - current.loaded_at
        problems = []
        if not self.subscriber.connected:
            problems.append(f"not connected to MQTT ({self.subscriber.last_error or 'connecting'})")
        if current is None:
            problems.append("kit registry not loaded")
        elif registry_age is not None and registry_age > 10 * self.settings.registry_refresh_s:
            problems.append(f"kit registry is {registry_age:.0f} s old ({self.registry.last_error})")
        if age > 60:
            problems.append(f"oldest unacknowledged message is {age:.0f} s old (is Kafka reachable?)")
        # The alert path through the bridge: every reading waits here until Kafka holds it.
        delays = []
        limit = self.settings.alert_path_max_age_s
        if age > limit:
            delays.append(
                f"a kit message has waited {age:.0f} s for Kafka (threshold {limit:.0f} s): "
                "alerts may be delayed"
            )
        report: dict[str, Any] = {
            "ok": not problems,
            "problems": problems,
            "delays": delays,
            "alert_path_age_s": round(age, 3),
            "alert_path_max_age_s": limit,
            "client_id": self.settings.client_id,
            "mqtt_connected": self.subscriber.connected,
            "unacknowledged_messages": count,
            "oldest_unacknowledged_s": round(age, 3),
            "pending_records": self.pending,
            "registry_kits": None if current is None else len(current.kits),
            "registry_age_s": None if registry_age is None else round(registry_age, 1),
            "rate_limited_messages": self._refused["readings"],
            "rate_limited_status_messages": self._refused["status"],
            "rate_limited_fhir_messages": self._refused["fhir"],
            "commands_relayed": self.commands.relayed,
            "commands_known": len(self.known_commands),
            "command_memory_ready": self.command_memory.ready.is_set(),
            "command_memory_waiting_for": None
            if self.command_memory.ready.is_set()
            else self.command_memory.last_error,
            "commands_dropped": self.commands.dropped,
        }
        report["status"] = health_status(report)
        return report


def _whole_rejection(inbound: Inbound, reason: RejectReason, detail: str) -> Outcome:
    """One rejection for the whole message, carrying its payload (cut, escaped)."""
    rejection = payload_rejection(
        topic=inbound.topic,
        payload=inbound.payload,
        received_at=inbound.received_at,
        kit_id=inbound.kit_id or None,
        reason=reason,
        detail=detail,
    )
    return Outcome(inbound.kit_id or None, rejections=[rejection])
