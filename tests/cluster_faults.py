"""Broker-loss faults for the crash matrix, on the stack's three-node Kafka cluster (docs/reliability.md).

    kafka-leader-kill      SIGKILL the node leading most of the measurement partitions; up again 10 s later
    kafka-controller-kill  SIGKILL the active controller (the KRaft quorum's leader); up again 10 s later
    kafka-rolling          each node in turn stopped cleanly and started, the next only once every
                           partition has all its replicas in sync again
    kafka-disk-loss        SIGKILL a node that is not the active controller, delete its data folder, and
                           start it: formatted anew with the cluster's id and its node id, it fetches
                           the metadata and its replicas from the other two

No stage is touched: the stages ride through on the two nodes left. Each fault ends when every
partition is fully in sync again, so the next scenario starts on a whole cluster.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING

from tests.conftest import REPO, stack_command

sys.path.insert(0, str(REPO / "infra"))
from kafka_cluster import Kafka
from processes import StackError
from stack import StackSettings, build

from contracts.topics import measurement_topic

if TYPE_CHECKING:
    from tests.crash_matrix import Pipeline

__all__ = ["CLUSTER_SCENARIOS", "EXTRA_LOAD_S", "cluster", "wait_in_sync"]

DOWN_S = 10.0  # a killed node stays down this long before `infra/stack up` starts it again
IN_SYNC_TIMEOUT_S = 180.0


def cluster() -> Kafka:
    """The stack's Kafka as `infra/stack` sees it (same settings: ports.env, VAKTROM_STACK_*)."""
    kafka = build(StackSettings.from_env())["kafka"]
    assert isinstance(kafka, Kafka)
    if len(kafka.nodes) < 3:
        raise RuntimeError(
            "the broker-loss scenarios need the three-node cluster (VAKTROM_STACK_KAFKA_NODES=3)"
        )
    return kafka


def wait_in_sync(kafka: Kafka, timeout: float = IN_SYNC_TIMEOUT_S) -> float:
    """Until every partition of every topic has all its replicas in sync; returns the seconds waited."""
    began = time.monotonic()
    while True:
        try:
            states = kafka.partitions_of(None)
        except StackError:
            states = []  # no node answered this time; ask again
        short = [s for s in states if len(s.isr) < len(s.replicas)]
        if states and not short:
            return time.monotonic() - began
        if time.monotonic() - began > timeout:
            raise RuntimeError(
                f"{len(short)} partitions still short of in-sync replicas after {timeout:.0f} s"
            )
        time.sleep(1.0)


def _stack(*args: str) -> None:
    result = stack_command(*args, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"infra/stack {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")


def _measurement_leader(pipe: Pipeline, kafka: Kafka) -> int:
    """The node that leads most partitions of the scenario's measurement topic."""
    leaders = Counter(s.leader for s in kafka.partitions_of(measurement_topic(f"{pipe.name}.")))
    return leaders.most_common(1)[0][0]


def _kill_and_return(
    pick: Callable[[Pipeline, Kafka], int], *, wipe: bool = False
) -> Callable[[Pipeline], None]:
    def fault(pipe: Pipeline) -> None:
        kafka = cluster()
        wait_in_sync(kafka)
        node = kafka.node(f"kafka-{pick(pipe, kafka)}")
        print(f"    killing {node.name}", flush=True)
        _stack("kill", node.name)
        if wipe:
            shutil.rmtree(node.data)
        time.sleep(DOWN_S)
        _stack("up", node.name)
        print(f"    {node.name} back; every replica in sync after {wait_in_sync(kafka):.1f} s", flush=True)

    return fault


def _not_the_controller(pipe: Pipeline, kafka: Kafka) -> int:
    """The measurement leader, unless it is the active controller: a static quorum's voter may lose its
    disk safely only while the other two hold the metadata (docs/reliability.md)."""
    controller = kafka.active_controller()
    leader = _measurement_leader(pipe, kafka)
    return leader if leader != controller else next(n.node_id for n in kafka.nodes if n.node_id != controller)


def _rolling(_pipe: Pipeline) -> None:
    kafka = cluster()
    wait_in_sync(kafka)
    for node in kafka.nodes:
        _stack("down", node.name)
        _stack("up", node.name)
        print(
            f"    {node.name} restarted; every replica in sync after {wait_in_sync(kafka):.1f} s", flush=True
        )


CLUSTER_SCENARIOS: dict[str, tuple[str, Callable[[Pipeline], None]]] = {
    "kafka-leader-kill": (
        "Kafka node leading the measurements SIGKILL, up 10 s later",
        _kill_and_return(_measurement_leader),
    ),
    "kafka-controller-kill": (
        "Kafka active controller SIGKILL, up 10 s later",
        _kill_and_return(lambda _pipe, kafka: kafka.active_controller()),
    ),
    "kafka-rolling": ("Kafka rolling restart, one node at a time", _rolling),
    "kafka-disk-loss": (
        "Kafka node SIGKILL, data folder deleted, rebuilt from its peers",
        _kill_and_return(_not_the_controller, wipe=True),
    ),
}
# seconds of load beyond the scenario's own, so that the whole fault happens under load
EXTRA_LOAD_S = {"kafka-rolling": 60.0, "kafka-disk-loss": 20.0}
