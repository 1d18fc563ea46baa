"""The bridge's command relay: Kafka's kit commands to each kit's MQTT `commands` topic (QoS 1).

One thread, its own consumer in the group VAKTROM_BRIDGE_COMMAND_GROUP:

    poll a batch -> for each command: find the patient's kit, remember (command id -> kit, patient),
    hand it to the network thread to publish (QoS 1) -> once the broker has PUBACKed every one,
    commit the batch's offsets

Delivery: a command is committed only after the broker holds it, so a bridge that stops or crashes
in between relays it again when it comes back; the repeat has the same command id, and the kit
shows it once. A command whose patient has no kit, or that expired before it could be relayed, is
dropped (and logged at info, without the patient's pseudonym).

The remembered commands let the bridge check the kits' acknowledgements (`ingest.kit_commands`).
They live in memory; at start the relay reads back the last VAKTROM_BRIDGE_COMMAND_LOOKBACK_H of
the topic (before its committed offsets: remembered, not relayed again), so an acknowledgement of a
command relayed before a restart is still recognised.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from contracts import KitCommandRequest, command_problem, topics
from ingest.kit_commands import KnownCommands, kit_of, to_kit
from ingest.registry import Registry
from runtime import kafka as rk
from runtime.settings import KafkaSettings

__all__ = ["CommandRelay"]

log = logging.getLogger(__name__)

_BATCH = 200
_SESSION_MS = 10_000  # the broker's group.min.session.timeout.ms is 6 s
_request_decoder = msgspec.json.Decoder(KitCommandRequest)

# (topic, payload, on_acknowledged): handed to the network thread, which publishes it with QoS 1
Publish = Callable[[str, bytes, Callable[[], None]], None]


class CommandRelay:
    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        group: str,
        client_id: str,
        root: str,
        lookback: timedelta,
        registry: Callable[[], Registry | None],
        publish: Publish,
        known: KnownCommands,
    ) -> None:
        self._kafka, self._group, self._client_id, self._root = kafka, group, client_id, root
        self._lookback, self._registry, self._publish, self.known = lookback, registry, publish, known
        self._topic = topics.kit_command_topic(kafka.topic_prefix)
        self._replay_until: dict[int, int] = {}
        self._position: dict[int, int] = {}  # partition -> the next offset to read
        self._assigned_once = False
        # set once the commands relayed before the start are remembered: the kits' acks wait for it
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bridge-commands", daemon=True)
        self.relayed = 0
        self.dropped = 0
        self.error: BaseException | None = None
        self._encoder = msgspec.json.Encoder()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() or self._stop.is_set()

    # ------------------------------------------------------------ the thread
    def _run(self) -> None:
        # A bridge stopped during a rebalance may not leave the group; the group then waits for its
        # session to end before a restarted bridge gets the partitions, and acks wait for that.
        # librdkafka's 45 s default held them past a test's 40 s once; 10 s bounds the stall.
        consumer = rk.consumer(
            self._kafka, group_id=self._group, client_id=f"{self._client_id}-commands",
            **{"session.timeout.ms": _SESSION_MS},
        )  # fmt: skip
        try:
            consumer.subscribe([self._topic], on_assign=self._assigned)
            while not self._stop.is_set():
                batch = [m for m in consumer.consume(_BATCH, 0.5) if rk.raise_for(m) is not None]
                self._note_ready()
                if batch:
                    self._relay(batch)
                    if self._stop.is_set():
                        return  # not all acknowledged, perhaps: not committed, relayed again later
                    consumer.commit(offsets=rk.next_offsets(batch), asynchronous=False)
        except BaseException as exc:  # the bridge reports it and stops (its health says why)
            log.exception("command relay failed")
            self.error = exc
        finally:
            consumer.close()

    def _assigned(self, consumer: rk.Consumer, partitions: list[Any]) -> None:
        """Start each partition `lookback` before its committed offset, to remember what was relayed."""
        committed = {p.partition: p.offset for p in consumer.committed(partitions, timeout=30)}
        since = int((datetime.now(UTC) - self._lookback).timestamp() * 1000)
        wanted = [rk.TopicPartition(p.topic, p.partition, since) for p in partitions]
        starts = {p.partition: p.offset for p in consumer.offsets_for_times(wanted, timeout=30)}
        for p in partitions:
            done, start = committed.get(p.partition, -1), starts.get(p.partition, -1)
            if done >= 0 and 0 <= start < done:
                self._replay_until[p.partition] = done
                p.offset = start
        self._assigned_once = True
        consumer.incremental_assign(partitions)  # the group's protocol is cooperative (runtime.kafka)

    def _relay(self, batch: list[Any]) -> None:
        """Publish the batch's commands and wait until the broker holds every one."""
        waiting = [0]
        done = threading.Event()

        def acknowledged() -> None:
            waiting[0] -= 1
            if waiting[0] <= 0:
                done.set()

        now = datetime.now(UTC)
        registry = self._registry()
        for message in batch:
            out = self._command(message, registry, now)
            if out is None:
                continue
            waiting[0] += 1
            self._publish(out[0], out[1], acknowledged)
        self._note_ready()  # before waiting for the broker: the replayed commands are remembered
        if waiting[0] > 0:
            while not done.wait(0.5):
                if self._stop.is_set():
                    return

    def _note_ready(self) -> None:
        if self.ready.is_set() or not self._assigned_once:
            return
        if all(self._position.get(p, -1) >= until for p, until in self._replay_until.items()):
            self.ready.set()

    def _command(self, message: Any, registry: Registry | None, now: datetime) -> tuple[str, bytes] | None:
        """(MQTT topic, payload) for one record, or None when nothing is to be sent for it."""
        self._position[message.partition()] = message.offset() + 1
        where = f"partition {message.partition()} at offset {message.offset()}"
        try:
            if message.value() is None:
                raise msgspec.DecodeError("the record has no value (a tombstone)")
            request = _request_decoder.decode(message.value())
            if (problem := command_problem(request.text)) is not None:
                raise msgspec.ValidationError(problem)
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            log.warning("commands: a record that is no kit command was skipped: %s (%s)", where, exc)
            self.dropped += 1
            return None
        kit_id = kit_of(registry, request.patient_id, now) if registry is not None else None
        if kit_id is None:
            log.info("commands: command %s dropped: the patient has no kit now", request.command_id)
            self.dropped += 1
            return None
        self.known.remember(request.command_id, kit_id, request.patient_id)
        if message.offset() < self._replay_until.get(message.partition(), -1):
            return None  # relayed before the restart; read again only to be remembered
        if request.expires_at <= now:
            log.info("commands: command %s expired before it could be relayed", request.command_id)
            self.dropped += 1
            return None
        self.relayed += 1
        payload = self._encoder.encode(to_kit(request, kit_id))
        return topics.kit_topic(kit_id, "commands", root=self._root), payload
