"""Attacker tests on Kafka (issue #28, finding 5): who may sign in at all, and to which broker.

An outsider is refused at the door: no credentials, TLS without SASL, a wrong password, with the
stages' own client (confluent-kafka) and with an outside one (kcat), and a care plan sent that way
never lands. A stage signs in only to the stack's broker (an impostor's certificate ends the
handshake before the stage's user name is sent), and the files holding Kafka passwords are made
owner-only again. What each signed-in principal may do: test_attack_kafka.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tls import ensure_server_certificates  # infra/tls.py: tests.conftest puts infra/ on the path

from contracts import topics
from runtime import kafka as rk
from tests.conftest import STATE, Stack, stack_command
from tests.integration.kafka_attack_support import attack_namespace, forged, new_marker, on_topic


@pytest.fixture(scope="module")
def namespace(stack: Stack) -> Iterator[str]:
    """One topic namespace for the whole module, with the stages' rules as the stack's topics get them."""
    with attack_namespace(stack) as name:
        yield name


# ------------------------------------------------------------------ the door: who may sign in at all
def _outsider(stack: Stack, **config: object) -> dict[str, object]:
    """A client of nobody's: only the address (plaintext, no credentials) and `config`."""
    return {"bootstrap.servers": stack.kafka_bootstrap, "logger": logging.getLogger("librdkafka"), **config}


def _no_metadata(client: rk.AdminClient | rk.Producer, timeout: float = 5.0) -> bool:
    """Whether the broker withholds metadata from `client` (it is refused while it signs in)."""
    try:
        client.list_topics(timeout=timeout)
    except rk.KafkaException:
        return True
    return False


def test_a_client_without_credentials_is_refused(stack: Stack, namespace: str) -> None:
    """Finding 5, class "forged records on Kafka": a plaintext client without credentials (anything
    that reaches the port) cannot even bootstrap, so its newer care plan never lands."""
    topic, marker = topics.careplan_topic(f"{namespace}."), new_marker()
    producer = rk.Producer(_outsider(stack, **{"message.timeout.ms": 5000}))
    assert _no_metadata(producer)
    producer.produce(topic, key=marker.encode(), value=forged("careplans", marker))
    producer.flush(10)
    assert not on_topic(stack, topic, marker)


def test_tls_without_sasl_is_refused(stack: Stack) -> None:
    """Finding 5, class "forged records on Kafka": a client that verifies the broker's certificate
    but brings no credentials is refused too (TLS alone authenticates only the broker)."""
    ca = stack.values["VAKTROM_KAFKA_CA"]
    assert _no_metadata(
        rk.AdminClient(_outsider(stack, **{"security.protocol": "SSL", "ssl.ca.location": ca}))
    )


def test_a_wrong_password_is_refused(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    """Finding 5, class "privilege of each broker account": the registry's name with a wrong
    password is refused by SCRAM (and the broker says so), as are the admin's and the broker's."""
    for name in ("registry", "admin"):
        wrong = dataclasses.replace(stack.kafka(name), password="not-the-password")  # noqa: S106
        with caplog.at_level(logging.DEBUG, logger="librdkafka"):
            client = rk.admin(wrong)
            assert _no_metadata(client, timeout=15)
            client.poll(0)  # librdkafka's log lines reach the logger only when the client is polled
    assert "invalid credentials" in caplog.text
    broker = dataclasses.replace(stack.kafka("admin"), username="vaktrom-broker", password="guess")  # noqa: S106
    assert _no_metadata(rk.admin(broker), timeout=15)


# ------------------------------------------------------------------ an outside client at the door
def _kcat(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["kcat", *args], input=stdin, capture_output=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def kcat_present() -> None:
    if subprocess.run(["which", "kcat"], capture_output=True, check=False).returncode != 0:
        pytest.fail("kcat is not installed; run infra/bootstrap (it installs the Debian kcat package)")


def test_kcat_without_credentials_is_refused(stack: Stack, namespace: str, kcat_present: None) -> None:
    """Finding 5, class "forged records on Kafka", with an outside client (kcat): plaintext and
    TLS-only connections get no metadata, and a care plan produced through them never lands."""
    topic, marker = topics.careplan_topic(f"{namespace}."), new_marker()
    ca = stack.values["VAKTROM_KAFKA_CA"]
    for extra in ([], ["-X", "security.protocol=SSL", "-X", f"ssl.ca.location={ca}"]):
        listed = _kcat("-b", stack.kafka_bootstrap, *extra, "-L", "-m", "5")
        assert listed.returncode != 0
        assert b"Failed to acquire metadata" in listed.stderr
        produced = _kcat(
            "-b", stack.kafka_bootstrap, *extra, "-P", "-t", topic, "-k", marker, "-m", "5",
            stdin=forged("careplans", marker),
        )  # fmt: skip
        assert produced.returncode != 0
    assert not on_topic(stack, topic, marker)


# ------------------------------------------------------------------ the passwords at rest
def test_the_files_holding_kafka_passwords_are_made_owner_only_again(stack: Stack) -> None:
    """Class "privilege of each broker account" (the passwords behind each principal): the files
    that hold Kafka passwords are readable by their owner only after `infra/stack up`, even when
    they were left wider before (a copy, a restore, a chmod), so another local user cannot read
    the admin's or a stage's password."""
    kafka_home = "kafka-single" if os.environ.get("VAKTROM_STACK_KAFKA_NODES") == "1" else "kafka"
    holders = [STATE / "stack.env", STATE / kafka_home / "credentials.json"]  # the running layout's
    for path in holders:
        path.chmod(0o644)
    up = stack_command("up", "kafka", timeout=180)
    assert up.returncode == 0, up.stdout + up.stderr
    wide = {str(path): oct(path.stat().st_mode & 0o777) for path in holders if path.stat().st_mode & 0o077}
    assert not wide, f"readable by others: {wide}"


# ------------------------------------------------------------------ a broker that is not the stack's
class _Impostor:
    """A TLS server on a free local port that presents `certificate` and records every byte a
    client sends it after the handshake (a client that goes on would send its SASL sign-in)."""

    def __init__(self, certificate: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(certificate, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self.handshakes = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _address = self.listener.accept()
            except OSError:
                return  # closed
            with raw:
                raw.settimeout(5)
                try:
                    with self.context.wrap_socket(raw, server_side=True) as conn:
                        self.handshakes += 1
                        while chunk := conn.recv(4096):
                            self.received += chunk
                except (OSError, ssl.SSLError):
                    continue  # the client refused our certificate: what we hope for

    def close(self) -> None:
        self.listener.close()


def _impostor_certificate(
    folder: Path, hosts: list[str], *, ca_from: Path | None = None
) -> tuple[Path, Path]:
    """A certificate for `hosts`, signed by a new CA, or by the stack's own when `ca_from` is its folder."""
    folder.mkdir()
    if ca_from is not None:
        for name in ("ca.crt", "ca.key"):
            (folder / name).write_bytes((ca_from / name).read_bytes())
    ensure_server_certificates(folder, hosts, name="kafka")
    return folder / "kafka.crt", folder / "kafka.key"


_SIGN_IN = """
import sys
from runtime.settings import KafkaSettings
from runtime import kafka as rk
try:
    rk.list_topics(rk.admin(KafkaSettings.from_env()), timeout=5)
except rk.KafkaException:
    sys.exit(3)
"""


@pytest.mark.parametrize("impostor", ["another CA", "the stack's CA, another name"])
def test_a_stage_does_not_sign_in_to_a_broker_that_is_not_the_stacks(
    stack: Stack, tmp_path: Path, impostor: str
) -> None:
    """Class "network attacker" (read or change traffic): a stage's client checks the broker's
    certificate against VAKTROM_KAFKA_CA and the name it dialled, so an impostor with a certificate
    of another CA, or of the stack's CA for another name, finishes no handshake and never sees the
    stage's SASL sign-in (its user name) or a record."""
    ca_dir = Path(stack.values["VAKTROM_KAFKA_CA"]).parent
    certificate, key = (
        _impostor_certificate(tmp_path / "other", ["127.0.0.1", "localhost"])
        if impostor == "another CA"
        else _impostor_certificate(tmp_path / "same", ["kafka-impostor.invalid"], ca_from=ca_dir)
    )
    server = _Impostor(certificate, key)
    try:
        signed_in = subprocess.run(  # a stage's client, from the stage's environment
            [sys.executable, "-c", _SIGN_IN],
            env={**os.environ, **stack.values, **stack.kafka_env("monitor"),
                 "VAKTROM_KAFKA_BOOTSTRAP": f"127.0.0.1:{server.port}"},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert signed_in.returncode == 3, signed_in.stdout + signed_in.stderr[-2000:]
        assert server.handshakes == 0, f"a client finished a TLS handshake with {impostor}"
        assert not server.received
    finally:
        server.close()
