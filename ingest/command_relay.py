"""The bridge's command relay: Kafka's kit commands to each kit's MQTT `commands` topic (QoS 1).

Two threads, each with its own consumer:

- `CommandRelay`, in the group VAKTROM_BRIDGE_COMMAND_GROUP (the bridges share the partitions):

      poll a batch -> for each command: find the patient's kit, remember (command id -> kit, patient),
      hand it to the network thread to publish (QoS 1) -> once the broker has PUBACKed every one,
      commit the batch's offsets

  Delivery: a command is committed only after the broker holds it, so a bridge that stops or crashes
  in between relays it again when it comes back; the repeat has the same command id, and the kit
  shows it once. A bridge asked to stop waits a moment for the acknowledgements in flight (its
  network thread keeps running meanwhile) so that what the kits have is committed. A command whose
  patient has no kit, or that expired before it could be relayed, is dropped (and logged at info,
  without the patient's pseudonym).

- `CommandMemory`, in no group: reads every partition of the topic from VAKTROM_BRIDGE_COMMAND_LOOKBACK_H
  ago and then follows it, remembering each command. A kit's acknowledgement reaches whichever bridge
  the broker's share group hands it to, and that bridge may not be the one that relayed the command,
  nor the same process (a restart): the memory lets every bridge check every ack. `ready` is set once
  it has read up to the end the topic had at start; the kits' acks wait for it (the start-up timeout
  in all). Partitions added to the topic later are read from their start within 30 s.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from contracts import KitCommandRequest, command_problem, topics
from ingest.kit_commands import KnownCommands, to_kit
from ingest.registry import Registry
from runtime import kafka as rk
from runtime.settings import KafkaSettings

__all__ = ["CommandMemory", "CommandRelay"]

log = logging.getLogger(__name__)

_BATCH = 200
_SESSION_MS = 10_000  # the broker's group.min.session.timeout.ms is 6 s
_RECHECK_S = 30.0  # how often the memory looks for partitions added to the topic
DRAIN_S = 3.0  # on stop, how long the relay waits for the broker's acknowledgements in flight
_request_decoder = msgspec.json.Decoder(KitCommandRequest)

# (topic, payload, on_acknowledged): handed to the network thread, which publishes it with QoS 1
Publish = Callable[[str, bytes, Callable[[], None]], None]


def _request(message: Any) -> KitCommandRequest | None:
    """The command a record carries, or None (logged) when it is none."""
    where = f"partition {message.partition()} at offset {message.offset()}"
    try:
        if message.value() is None:
            raise msgspec.DecodeError("the record has no value (a tombstone)")
        request = _request_decoder.decode(message.value())
        if (problem := command_problem(request.text)) is not None:
            raise msgspec.ValidationError(problem)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        log.warning("commands: a record that is no kit command was skipped: %s (%s)", where, exc)
        return None
    return request


class _Thread:
    """A named daemon thread with a stop flag and the error that ended it."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._guarded, name=name, daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout=timeout)

    def stop(self) -> None:
        self.request_stop()
        self.join(10)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _guarded(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # the bridge reports it and stops (its health says why)
            log.exception("%s failed", self._thread.name)
            self.error = exc

    def _run(self) -> None:
        raise NotImplementedError


class CommandRelay(_Thread):
    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        group: str,
        client_id: str,
        root: str,
        registry: Callable[[], Registry | None],
        publish: Publish,
        known: KnownCommands,
    ) -> None:
        super().__init__("bridge-commands")
        self._kafka, self._group, self._client_id, self._root = kafka, group, client_id, root
        self._registry, self._publish, self.known = registry, publish, known
        self._topic = topics.kit_command_topic(kafka.topic_prefix)
        self.relayed = 0
        self.dropped = 0
        self._encoder = msgspec.json.Encoder()

    def _run(self) -> None:
        # A bridge that crashes does not leave the group; the group then waits for its session to
        # end before a restarted bridge gets the partitions. librdkafka's 45 s default is long for
        # a nurse's message; 10 s bounds the stall.
        consumer = rk.consumer(
            self._kafka, group_id=self._group, client_id=f"{self._client_id}-commands",
            **{"session.timeout.ms": _SESSION_MS},
        )  # fmt: skip
        try:
            consumer.subscribe([self._topic])
            while not self._stop.is_set():
                batch = [m for m in consumer.consume(_BATCH, 0.5) if rk.is_record(m, who="commands")]
                if not batch:
                    continue
                if not self._relay(batch):
                    return  # stopped before the broker had them all: not committed, relayed again later
                consumer.commit(offsets=rk.next_offsets(batch), asynchronous=False)
        finally:
            consumer.close()

    def _relay(self, batch: list[Any]) -> bool:
        """Publish the batch's commands; whether the broker acknowledged every one."""
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
        if waiting[0] == 0:
            return True
        give_up: float | None = None
        while not done.wait(0.2):
            if self._stop.is_set():
                give_up = give_up or time.monotonic() + DRAIN_S
                if time.monotonic() > give_up:
                    return False
        return True

    def _command(self, message: Any, registry: Registry | None, now: datetime) -> tuple[str, bytes] | None:
        """(MQTT topic, payload) for one record, or None when nothing is to be sent for it."""
        request = _request(message)
        if request is None:
            self.dropped += 1
            return None
        kit_id = registry.kit_of(request.patient_id, now) if registry is not None else None
        if kit_id is None:
            log.info("commands: command %s dropped: the patient has no kit now", request.command_id)
            self.dropped += 1
            return None
        if request.expires_at <= now:
            log.info("commands: command %s expired before it could be relayed", request.command_id)
            self.dropped += 1
            return None
        self.known.remember(request)
        self.relayed += 1
        payload = self._encoder.encode(to_kit(request, kit_id))
        return topics.kit_topic(kit_id, "commands", root=self._root), payload


class _NoTopicError(Exception):
    """The command topic is not there (yet: a cluster restarting may not list it for a moment)."""


class CommandMemory(_Thread):
    def __init__(
        self,
        *,
        kafka: KafkaSettings,
        group: str,
        client_id: str,
        lookback: timedelta,
        known: KnownCommands,
        recheck_s: float = _RECHECK_S,
    ) -> None:
        super().__init__("bridge-command-memory")
        self._kafka, self._group, self._client_id, self._lookback = kafka, group, client_id, lookback
        self._recheck_s = recheck_s
        self._partitions = 0  # of the topic, as last seen
        self.known = known
        self._topic = topics.kit_command_topic(kafka.topic_prefix)
        self.ready = threading.Event()  # read up to the end the topic had at start
        self.remembered = 0
        self.last_error: str | None = None  # why `ready` is not set yet, for /health
        self._wait_until: float | None = None  # the acks' one budget of waiting for `ready`

    def wait_ready(self, budget_s: float) -> bool:
        """Wait for `ready`, `budget_s` in all: the first caller waits up to it, later ones only for
        what is left. Acks wait in the worker thread, which carries every kit's readings too, so a
        flood of acks (a buggy or hostile kit) before `ready` must not hold it `budget_s` apiece."""
        if self._wait_until is None:  # the worker thread alone calls this
            self._wait_until = time.monotonic() + budget_s
        return self.ready.wait(max(0.0, self._wait_until - time.monotonic()))

    def _run(self) -> None:
        # assigned, not subscribed: the group is named (a consumer must) but never joined or committed;
        # every bridge reads every partition
        consumer = rk.consumer(
            self._kafka, group_id=self._group, client_id=f"{self._client_id}-command-memory"
        )
        try:
            behind = self._assign_patiently(consumer)
            if behind is None:
                return  # stopped before Kafka answered
            recheck = time.monotonic() + self._recheck_s
            while not self._stop.is_set():
                if not behind:
                    self.ready.set()
                if time.monotonic() >= recheck:  # partitions added to the topic: read them from their start
                    recheck = time.monotonic() + self._recheck_s
                    self._partitions = self._follow_new(consumer, self._partitions)
                for message in consumer.consume(_BATCH, 0.2):
                    if not rk.is_record(message, who="command memory"):
                        continue
                    self._remember(message)
                    partition, offset = message.partition(), message.offset()
                    if partition in behind and offset is not None and offset + 1 >= behind[partition]:
                        del behind[partition]
        finally:
            consumer.close()

    def _assign_patiently(self, consumer: Any) -> dict[int, int] | None:
        """`_assign`, asked again while Kafka cannot answer (away, restarting, a leader's epoch not
        known yet): the memory waits for Kafka like the rest of the bridge, it does not stop the
        bridge. None when stopped meanwhile."""
        pause = 0.5
        while not self._stop.is_set():
            try:
                return self._assign(consumer)
            except (rk.KafkaException, _NoTopicError) as exc:
                self.last_error = str(exc)
                log.warning("commands: cannot read back the kit commands yet (%s); asking again", exc)
            self._stop.wait(pause)
            pause = min(pause * 2, 10.0)
        return None

    def _assign(self, consumer: Any) -> dict[int, int]:
        """Assign every partition from `lookback` ago; {partition: the end it had} of those to read."""
        count = rk.topic_partitions(consumer, [self._topic], timeout=30).get(self._topic)
        if count is None:
            raise _NoTopicError(f"the topic {self._topic} does not exist (`make stack-up` creates it)")
        since = int((datetime.now(UTC) - self._lookback).timestamp() * 1000)
        wanted = [rk.TopicPartition(self._topic, p, since) for p in range(count)]
        behind, assigned = {}, []
        for found in consumer.offsets_for_times(wanted, timeout=30):
            _low, end = rk.watermarks(consumer, rk.TopicPartition(self._topic, found.partition))
            start = found.offset if 0 <= found.offset < end else end  # -1: nothing written since
            if start < end:
                behind[found.partition] = end
            assigned.append(rk.TopicPartition(self._topic, found.partition, start))
        consumer.assign(assigned)
        self._partitions = count
        return behind

    def _follow_new(self, consumer: Any, known: int) -> int:
        """Assign the partitions added since the topic had `known`, from their start (they began
        empty when added); how many it has now."""
        try:
            count = rk.topic_partitions(consumer, [self._topic], timeout=10).get(self._topic) or known
        except rk.KafkaException as exc:  # Kafka busy or away a moment: look again next time
            log.warning("commands: could not look for new partitions of %s: %s", self._topic, exc)
            return known
        if count > known:
            log.info("commands: the topic %s has %d partitions now (was %d): reading the new ones",
                     self._topic, count, known)  # fmt: skip
            consumer.incremental_assign(
                [rk.TopicPartition(self._topic, p, rk.OFFSET_BEGINNING) for p in range(known, count)]
            )
        return count

    def _remember(self, message: Any) -> None:
        request = _request(message)
        if request is not None and self.known.remember(request):
            self.remembered += 1
