"""MQTT over TLS on the real Mosquitto: kits verify the broker against the CA the infra scripts made.

`infra/stack up` makes the CA and the broker's certificate (infra/tls.py) and opens two TLS
listeners beside the plain loopback one: one that verifies the broker only, and one that also
requires a client certificate signed by the CA.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from contracts import topics
from tests.conftest import REPO, Broker, Stack
from tests.integration.bridge_support import (
    BridgeProcess,
    consume,
    enrol_kit,
    kit_message,
    kit_reading,
    mosquitto_login,
    reading_topic,
    simulate,
)


def _tls(stack: Stack) -> tuple[int, int, Path]:
    values = stack.values
    return (
        int(values["VAKTROM_STACK_MQTT_TLS_PORT"]),
        int(values["VAKTROM_STACK_MQTT_MTLS_PORT"]),
        Path(values["VAKTROM_STACK_MQTT_TLS_DIR"]),
    )


def _client(stack: Stack, tmp: Path, name: str) -> tuple[Path, Path]:
    """A client certificate signed by the stack's CA, made with the infra script (in a copy of the
    CA folder, so the stack's own folder is left as it is)."""
    _port, _mport, tls = _tls(stack)
    folder = tmp / "tls"
    folder.mkdir()
    for part in ("ca.crt", "ca.key"):
        (folder / part).write_bytes((tls / part).read_bytes())
    made = subprocess.run(
        [sys.executable, str(REPO / "infra" / "tls.py"), str(folder), "--client", name],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    return folder / f"{name}.crt", folder / f"{name}.key"


def _pub(stack: Stack, port: int, topic: str, *tls: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["mosquitto_pub", "-h", stack.mqtt_host, "-p", str(port), *mosquitto_login(stack),
         "-q", "1", "-t", topic, "-m", "over tls", *tls],
        capture_output=True, text=True, check=False, timeout=20,
    )  # fmt: skip


def _sub(stack: Stack, port: int, topic: str, *tls: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["mosquitto_sub", "-h", stack.mqtt_host, "-p", str(port), *mosquitto_login(stack),
         "-q", "1", "-t", topic, "-C", "1", "-W", "15", "-v", *tls],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_mosquitto_pub_over_tls_verifies_the_broker_and_fails_without_the_ca(
    stack: Stack, mqtt: Broker, unique: str
) -> None:
    port, _mport, tls = _tls(stack)
    ca = ("--cafile", str(tls / "ca.crt"))
    topic = f"{unique}/tls"
    sub = _sub(stack, port, topic, *ca)
    published = None
    for _attempt in range(20):  # until the subscriber is in
        published = _pub(stack, port, topic, *ca)
        assert published.returncode == 0, published.stderr
        try:
            out, err = sub.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            continue
    else:
        out, err = sub.communicate(timeout=15)
    assert out.strip() == f"{topic} over tls", err

    # the system's trust store does not know our CA: the certificate is not verified, nothing sent
    system = _pub(stack, port, topic, "--capath", "/etc/ssl/certs")
    assert system.returncode != 0
    assert "certificate verify failed" in system.stderr.lower() or "tls" in system.stderr.lower(), (
        system.stderr
    )
    # plain MQTT to the TLS port is no MQTT at all
    plain = _pub(stack, port, topic)
    assert plain.returncode != 0
    # the certificate names the host the kit dialled: another name for the same address is refused
    wrong_name = subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.2", "-p", str(port), *mosquitto_login(stack), "-q", "1",
         "-t", topic, "-m", "x", *ca],
        capture_output=True, text=True, check=False, timeout=20,
    )  # fmt: skip
    assert wrong_name.returncode != 0


def test_the_client_certificate_listener_wants_a_certificate_from_our_ca(
    stack: Stack, mqtt: Broker, unique: str, tmp_path: Path
) -> None:
    _port, mport, tls = _tls(stack)
    ca = ("--cafile", str(tls / "ca.crt"))
    refused = _pub(stack, mport, f"{unique}/m", *ca)
    assert refused.returncode != 0, "no client certificate, no connection"
    cert, key = _client(stack, tmp_path, "kit-under-test")
    accepted = _pub(stack, mport, f"{unique}/m", *ca, "--cert", str(cert), "--key", str(key))
    assert accepted.returncode == 0, accepted.stderr


def _bridge_on_the_certificate_listener(
    bridge: BridgeProcess, stack: Stack, tmp_path: Path
) -> tuple[int, Path]:
    """Point the bridge at the listener that requires a client certificate, with one; returns the
    kits' TLS port and the broker's TLS folder (its CA)."""
    port, mport, tls = _tls(stack)
    cert, key = _client(stack, tmp_path, "vaktrom-bridge")
    bridge.extra_env.update(
        {
            "VAKTROM_MQTT_PORT": str(mport),
            "VAKTROM_MQTT_HOST": "localhost",
            "VAKTROM_MQTT_TLS_CA": str(tls / "ca.crt"),
            "VAKTROM_MQTT_TLS_CERT": str(cert),
            "VAKTROM_MQTT_TLS_KEY": str(key),
        }
    )
    return port, tls


def test_kits_and_the_bridge_talk_over_tls_end_to_end(
    bridge: BridgeProcess, stack: Stack, tmp_path: Path
) -> None:
    """The simulator verifies the broker on the TLS listener; the bridge logs in on the listener
    that requires a client certificate, with one. Every confirmed reading reaches Kafka."""
    port, tls = _bridge_on_the_certificate_listener(bridge, stack, tmp_path)
    bridge.start()
    assert "mqtts://localhost" in bridge.log_path.read_text()
    out = tmp_path / "sim"
    result = simulate(
        bridge, stack, out, kits=20, seconds=2, rate=50, during=None,
        extra_args=["--port", str(port), "--cafile", str(tls / "ca.crt")],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    ledger = json.loads((out / "ledger.json").read_text())
    assert ledger["readings"]["confirmed"] == ledger["readings"]["total"] == 200
    records = consume(stack, topics.measurement_topic(bridge.prefix), until=200, timeout=60)
    assert len({value["measurement_id"] for _k, value, _h in records}) == 200


def test_a_user_property_paho_refuses_does_not_stall_the_bridge_over_tls(
    bridge: BridgeProcess, stack: Stack, tmp_path: Path
) -> None:
    """A kit's MQTT 5 user property holding U+FEFF (legal; Mosquitto forwards it as it is) reaches
    the bridge over TLS, where paho reads every packet: the reading and the one after it are stored.
    paho 2.2 called the packet malformed and the bridge reconnected for ever on its redelivery."""
    _bridge_on_the_certificate_listener(bridge, stack, tmp_path)
    kit, _patient, oximeter = enrol_kit(stack, bridge.name)
    bridge.start()
    for seq, extra in ((1, ["-D", "publish", "user-property", "note", "\ufeffbom"]), (2, [])):
        message = kit_message(kit, seq, kit_reading(oximeter, "spo2", 90.0 + seq, "%"))
        sent = subprocess.run(
            ["mosquitto_pub", "-h", stack.mqtt_host, "-p", str(stack.mqtt_port), *mosquitto_login(stack),
             "-V", "mqttv5", "-q", "1", "-t", reading_topic(bridge, kit), "-s", *extra],
            input=message, capture_output=True, timeout=20, check=False,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr.decode()
    records = consume(stack, topics.measurement_topic(bridge.prefix), until=2, timeout=30)
    assert sorted(value["kit_seq"] for _k, value, _h in records) == [1, 2], bridge.tail()
    assert "connection lost" not in bridge.log_path.read_text()


def test_the_simulator_refuses_a_broker_it_cannot_verify(stack: Stack, mqtt: Broker, tmp_path: Path) -> None:
    """Pointed at the TLS listener with a CA that did not sign the broker, the kit does not send."""
    port, _mport, _tls_dir = _tls(stack)
    other = tmp_path / "other"
    made = subprocess.run(
        [sys.executable, str(REPO / "infra" / "tls.py"), str(other)],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    user, password = stack.mqtt_auth
    result = subprocess.run(
        [sys.executable, "-m", "gateway_sim", "load", "--kits", "2", "--rate", "5", "--duration", "1s",
         "--host", stack.mqtt_host, "--port", str(port), "--cafile", str(other / "ca.crt"),
         "--username", user, "--password", password, "--out", str(tmp_path / "out"), "--quiet"],
        capture_output=True, text=True, check=False, timeout=120,
        env={"PYTHONPATH": f"{REPO}:{REPO / 'gateway-sim'}", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.returncode != 0
    assert "certificate" in result.stderr.lower(), result.stderr[-1500:]
