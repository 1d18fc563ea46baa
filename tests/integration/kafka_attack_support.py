"""What the Kafka attack tests share: a topic namespace of their own, forged records and a look at a topic.

test_attack_kafka.py (each principal's privileges) and test_attack_kafka_sign_in.py (who may sign in,
and to which broker) both forge records and check with the admin principal that none landed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from tests.conftest import Stack
from tests.integration.stage_support import consume, delete_namespace, prepare

__all__ = ["attack_namespace", "forged", "new_marker", "on_topic"]


@contextmanager
def attack_namespace(stack: Stack) -> Iterator[str]:
    """A new topic namespace with the stages' rules as the stack's topics get them; deleted after."""
    name = f"atk{uuid.uuid4().hex[:8]}"
    prepare(stack, name)
    yield name
    delete_namespace(stack, name)


def forged(topic: str, marker: str) -> bytes:
    """A forged record as an attacker would write it: the payloads of finding 5 where they apply."""
    if topic == "careplans":  # a newer version that switches the patient's red rules off
        body = {"patient_id": marker, "version": 1_000_000, "rules_off": ["HF-1", "HF-2", "NEWS2-S1"]}
    elif topic == "alerts":  # an episode closed that nobody closed
        body = {"episode_id": marker, "version": 1_000_000, "change": "resolved", "severity": "red"}
    elif topic == "measurements":  # a reading the kit never took
        body = {"measurement_id": marker, "patient_id": marker, "metric": "spo2", "value": 99.0}
    else:
        body = {"forged": marker}
    return json.dumps(body).encode()


def new_marker() -> str:
    """A key no other record has, to find a forged record by."""
    return f"forged-{uuid.uuid4().hex[:12]}"


def on_topic(stack: Stack, topic: str, marker: str) -> bool:
    """Whether a record keyed `marker` is on `topic`, read by the admin principal."""
    return any(key == marker.encode() for key, _value, _headers in consume(stack, topic, idle=1.0))
