"""The local stack's Kafka cluster id: a Kafka Uuid the storage tool accepts."""

from __future__ import annotations

import base64

import kafka_init
from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=200)
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_a_cluster_id_never_starts_with_a_dash(first: bytes, second: bytes) -> None:
    """Kafka's storage tool reads an id starting with "-" as an option: such ids are drawn again."""
    draws = iter([first, second, bytes(16)])

    class Uuid:
        def __init__(self) -> None:
            self.bytes = next(draws)

    original = kafka_init.uuid.uuid4
    kafka_init.uuid.uuid4 = Uuid  # type: ignore[assignment]
    try:
        cluster_id = kafka_init.kafka_cluster_id()
    finally:
        kafka_init.uuid.uuid4 = original
    assert not cluster_id.startswith("-")
    assert len(cluster_id) == 22
    assert "=" not in cluster_id
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
    expected = next(b for b in (first, second, bytes(16)) if base64.urlsafe_b64encode(b)[:1] != b"-")
    assert cluster_id == base64.urlsafe_b64encode(expected).rstrip(b"=").decode()
