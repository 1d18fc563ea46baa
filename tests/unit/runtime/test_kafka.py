"""The client layer every stage uses: how it signs in, and where it puts a patient's records."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime import kafka as rk
from runtime.settings import KafkaSettings

_LOGIN = {"VAKTROM_KAFKA_USERNAME": "vaktrom-bridge", "VAKTROM_KAFKA_PASSWORD": "s3cret"}


def test_clients_sign_in_with_scram_over_verified_tls() -> None:
    kafka = KafkaSettings.from_env({**_LOGIN, "VAKTROM_KAFKA_BOOTSTRAP": "k1:9092,k2:9092"})
    config = rk.client_config(kafka, client_id="test")
    assert config["bootstrap.servers"] == "k1:9092,k2:9092"
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanisms"] == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"]) == ("vaktrom-bridge", "s3cret")
    assert config["ssl.endpoint.identification.algorithm"] == "https"  # the broker's name is checked
    assert dict(kafka.describe())["VAKTROM_KAFKA_PASSWORD"] == "***"  # noqa: S105 - the mask


def test_a_plaintext_broker_gets_no_credentials() -> None:
    kafka = KafkaSettings.from_env({"VAKTROM_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"})
    config = rk.client_config(kafka, client_id="test")
    assert config["security.protocol"] == "PLAINTEXT"
    assert not {k for k in config if k.startswith(("sasl.", "ssl."))}


def test_producers_wait_for_every_replica_and_partition_as_java_does() -> None:
    config = rk.producer_config(KafkaSettings.from_env(_LOGIN), client_id="test", **{"linger.ms": 20})
    assert (config["acks"], config["enable.idempotence"]) == ("all", True)
    assert config["partitioner"] == "murmur2_random"  # = partition_of, the Java client's choice
    assert config["linger.ms"] == 20  # a stage's own setting wins
    rk.producer(KafkaSettings.from_env(_LOGIN), client_id="test").flush(0)  # librdkafka takes them


@pytest.mark.parametrize(
    ("key", "expected"),
    # Kafka's own test vectors for Utils.murmur2 (the Java client's default partitioner)
    [(b"21", -973932308), (b"foobar", -790332482), (b"a-little-bit-long-string", -985981536),
     (b"a-little-bit-longer-string", -1486304829),
     (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971), (b"abc", 479470107)],
)  # fmt: skip
def test_murmur2_matches_the_java_client(key: bytes, expected: int) -> None:
    assert rk.murmur2(key) == expected


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=1000))
def test_a_key_always_lands_in_one_of_the_partitions(key: bytes, count: int) -> None:
    assert 0 <= rk.partition_of(key, count) < count


def test_an_admin_request_kafka_never_answers_fails_in_time_and_keeps_its_client() -> None:
    """After a broker restart one admin request never came back and a test waited for good; the wait
    is bounded, and the client is kept alive rather than destroyed with the request outstanding."""
    from concurrent.futures import Future  # noqa: PLC0415

    client, never = object(), Future[int]()
    with pytest.raises(rk.KafkaException) as raised:
        rk.wait(never, client, timeout=0.05)
    assert raised.value.args[0].code() == rk.KafkaError._TIMED_OUT
    assert client in rk._ABANDONED
    done: Future[int] = Future()
    done.set_result(7)
    assert rk.wait(done, object(), timeout=0.05) == 7


def test_librdkafka_says_a_repeated_complaint_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """While Kafka is away every client logs each failed connection several times a second."""
    log = logging.getLogger("librdkafka")
    with caplog.at_level(logging.ERROR, logger="librdkafka"):
        for after in range(50):
            log.error("FAIL [c#consumer-1]: Connect to 127.0.0.1:19092 failed (after %dms)", after)
        log.error("FAIL [c#consumer-1]: SSL handshake failed")
    lines = [r.getMessage() for r in caplog.records if r.name == "librdkafka"]
    assert len(lines) == 2, lines  # the first of the 50, and the other kind
    assert "SSL handshake" in lines[1]
