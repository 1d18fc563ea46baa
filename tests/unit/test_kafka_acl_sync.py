"""infra/kafka_acl.py wait_every_broker against a fake admin client: its one deadline, the marker
always deleted, a node that leaves let go, a silent live one named (the reviewer's reproducers).
Against the real three nodes: tests/integration/test_stack.py."""

from __future__ import annotations

import sys
import time
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra"))
from kafka_acl import AclError, wait_every_broker


def _done(value: Any = None) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_result(value)
    return future


def _failed(code: int) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_exception(KafkaException(KafkaError(code)))
    return future


class FakeAdmin:
    """Nodes `brokers`; a `silent` node is listed live but its requests never come back (killed,
    not fenced yet); a node in `leaves` drops out of the list after the first round of asking."""

    def __init__(
        self, brokers: list[int], *, create_fails: int | None = None,
        silent: frozenset[int] = frozenset(), leaves: frozenset[int] = frozenset(),
    ) -> None:  # fmt: skip
        self.live = set(brokers)
        self.create_fails, self.silent, self.leaves = create_fails, silent, leaves
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.assignment: list[list[int]] = []
        self.asked: list[int] = []  # partitions asked for, in order

    def list_topics(self, topic: str | None = None, timeout: float = 10) -> Any:
        return SimpleNamespace(brokers={b: SimpleNamespace(id=b) for b in self.live}, topics={})

    def create_topics(self, new: list[Any], operation_timeout: float, request_timeout: float) -> Any:
        (topic,) = new
        self.created.append(topic.topic)  # the controller took it ...
        self.assignment = list(topic.replica_assignment)
        if self.create_fails is not None:  # ... but the client did not hear of it
            return {topic.topic: _failed(self.create_fails)}
        return {topic.topic: _done()}

    def create_partitions(self, new: list[Any], operation_timeout: float, request_timeout: float) -> Any:
        (grown,) = new
        self.assignment += list(grown.replica_assignment)
        return {grown.topic: _done()}

    def list_offsets(self, wanted: dict[Any, Any], request_timeout: float) -> Any:
        out = {}
        for tp in wanted:
            self.asked.append(tp.partition)
            leader = self.assignment[tp.partition][0]
            out[tp] = Future() if leader in self.silent | self.leaves else _done(0)
        self.live -= self.leaves
        return out

    def delete_topics(self, names: list[str], operation_timeout: float, request_timeout: float) -> Any:
        self.deleted.extend(names)
        return {name: _done() for name in names}


def test_every_node_answers_twice_and_the_marker_goes() -> None:
    admin = FakeAdmin([1, 2, 3])
    wait_every_broker(admin, timeout=5)  # type: ignore[arg-type]
    assert [leader for [leader] in admin.assignment] == [1, 2, 3, 1, 2, 3]  # two rounds, each node leads one
    assert sorted(admin.asked) == [0, 1, 2, 3, 4, 5]
    assert admin.deleted == admin.created
    assert len(admin.created) == 1


def test_one_node_is_asked_too() -> None:
    """Credentials have no describe to poll: the one node must show it applied them as well."""
    admin = FakeAdmin([1])
    wait_every_broker(admin, timeout=5)  # type: ignore[arg-type]
    assert sorted(admin.asked) == [0, 1]


def test_a_marker_the_controller_made_but_the_client_did_not_hear_of_is_deleted() -> None:
    admin = FakeAdmin([1, 2, 3], create_fails=KafkaError._TIMED_OUT)
    with pytest.raises(AclError, match="could not make the marker topic"):
        wait_every_broker(admin, timeout=1)  # type: ignore[arg-type]
    assert admin.deleted == admin.created


def test_live_silent_nodes_fail_within_the_timeout_and_are_named() -> None:
    admin = FakeAdmin([1, 2, 3], silent=frozenset({2, 3}))
    began = time.monotonic()
    with pytest.raises(AclError, match=r"Kafka nodes \[2, 3\] did not answer .*down or behind"):
        wait_every_broker(admin, timeout=0.5)  # type: ignore[arg-type]
    assert time.monotonic() - began < 0.5 * 3  # one deadline, not one per request
    assert admin.deleted == admin.created


def test_a_node_that_leaves_while_awaited_is_let_go() -> None:
    """Killed and fenced meanwhile: it catches up before it serves again, so the grant stands."""
    admin = FakeAdmin([1, 2, 3], leaves=frozenset({3}))
    began = time.monotonic()
    wait_every_broker(admin, timeout=30)  # type: ignore[arg-type]
    assert time.monotonic() - began < 10  # let go at the next look, not at the request's timeout
    assert admin.deleted == admin.created
