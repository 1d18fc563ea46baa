"""Running the real stages in tests: each as its own process with the test's own topics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psycopg

from runtime import kafka as rk
from tests.conftest import REPO, Stack

sys.path.insert(0, str(REPO / "infra"))
from enrol import enrol
from kafka_acl import grant
from topics import consumer_lag, delete_topics, ensure_topics

__all__ = [
    "StageProcess",
    "broker_login",
    "consume",
    "consumer_lag",
    "delete_namespace",
    "enrol",
    "free_port",
    "prepare",
    "produce",
    "sql",
    "stage_groups",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dynsec(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """One `mosquitto_ctrl dynsec` command with the broker's admin account (an outsider's tool)."""
    values = stack.values
    return subprocess.run(
        ["mosquitto_ctrl", "-h", stack.mqtt_host, "-p", str(stack.mqtt_port),
         "-u", values["VAKTROM_MQTT_ADMIN_USERNAME"], "-P", values["VAKTROM_MQTT_ADMIN_PASSWORD"],
         "dynsec", *args],
        capture_output=True, text=True, timeout=20, check=False,
    )  # fmt: skip


def broker_login(stack: Stack, username: str, *, role: str, client_id: str | None) -> str:
    """A service account of the test's own with one role of contracts.mqtt_accounts (bound to
    `client_id` when given), made with the admin account; returns its password. Repeating it keeps
    the account and sets a new password."""
    password = f"pw-{uuid.uuid4().hex}"
    made = dynsec(stack, "createClient", username, "-p", password, *(["-c", client_id] if client_id else []))
    if "already exists" in made.stdout + made.stderr:
        made = dynsec(stack, "setClientPassword", username, password)
    assert made.returncode == 0, f"mosquitto_ctrl could not make {username}: {made.stdout}{made.stderr}"
    added = dynsec(stack, "addClientRole", username, role)
    assert added.returncode == 0, f"mosquitto_ctrl could not give {username} role {role}: {added.stderr}"
    return password


@dataclass
class StageProcess:
    """A stage (`python -m <module>`) as its own process with the test's topic prefix; stopped at the end.

    Subclasses name the module and add their own environment in `stage_env()`.
    """

    module: ClassVar[str] = ""
    label: ClassVar[str] = "stage"
    metrics_env: ClassVar[str] = ""

    stack: Stack
    name: str  # the test's unique name: topic prefix, MQTT root, client id
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    starts: int = 0

    @property
    def prefix(self) -> str:
        return f"{self.name}."

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.label}-{self.name}.log"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.stack.env,
            "PYTHONPATH": str(REPO),
            "VAKTROM_TOPIC_PREFIX": self.prefix,
            **self.stack.kafka_env(self.label),  # the stage's own Kafka principal
            self.metrics_env: str(self.metrics_port),
            **self.stage_env(),
            **self.extra_env,
        }

    def stage_env(self) -> dict[str, str]:
        return {}

    def start(self, *, wait: bool = True) -> None:
        if not self.metrics_port:
            self.metrics_port = free_port()
        self.starts += 1
        with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module], env=self.env(), stdout=log, stderr=subprocess.STDOUT
            )
        if wait:
            self.wait_healthy()

    def health(self, *, unhealthy_too: bool = False) -> dict[str, Any] | None:
        """/health's report; None when it does not answer, and when it answers 503 (not ok) unless
        `unhealthy_too`, which returns the 503's report as well."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/health", timeout=2) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return json.loads(exc.read()) if unhealthy_too else None
        except OSError:
            return None
        except json.JSONDecodeError:
            return None

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def wait_healthy(self, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"the {self.label} exited with {self.process.returncode}:\n{self.tail()}"
                )
            report = self.health()
            if report is not None and report.get("ok"):
                return
            time.sleep(0.2)
        raise AssertionError(f"the {self.label} did not become healthy within {timeout} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise AssertionError(
                f"the {self.label} did not stop within 30 s of SIGTERM:\n{self.tail()}"
            ) from None


def stage_groups(name: str) -> dict[str, str]:
    """The consumer groups of a test's stages (the monitor's is its app id under the prefix)."""
    return {
        "monitor": f"{name}.monitor",
        "archive": f"{name}-archive",
        "alerts": f"{name}-alerts",
        "bridge": f"{name}.bridge-commands",  # the bridge's command relay (contracts.kafka_acl)
    }


def prepare(stack: Stack, name: str) -> None:
    """The test's own Kafka topics (three partitions each), and the stages' access rules for them:
    the same rules as the stack's own topics get (contracts.kafka_acl)."""
    ensure_topics(stack.kafka(), prefix=f"{name}.", partitions=3)
    grant(stack.kafka(), f"{name}.", groups=stage_groups(name))


def delete_namespace(stack: Stack, name: str) -> None:
    """Remove what `prepare` made for a module-wide namespace (its topics; the rules are harmless)."""
    delete_topics(stack.kafka(), [f"{name}."])


def sql(stack: Stack, statement: str, params: Iterable[Any] = ()) -> None:
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute(statement, tuple(params))  # type: ignore[arg-type]


def consume(
    stack: Stack, topic: str, *, until: int | None = None, timeout: float = 30, idle: float = 3.0
) -> list[tuple[bytes | None, dict[str, Any], list[tuple[str, bytes]]]]:
    """Every record of `topic` from the start: (key, decoded value, headers); stops at `until` records
    or after `idle` seconds without new ones (or `timeout`)."""
    consumer = rk.consumer(stack.kafka(), group_id=f"test-read-{uuid.uuid4().hex}", client_id="test-read")
    try:
        count = rk.topic_partitions(consumer, [topic]).get(topic, 0)
        consumer.assign([rk.TopicPartition(topic, p, rk.OFFSET_BEGINNING) for p in range(count)])
        records: list[tuple[bytes | None, dict[str, Any], list[tuple[str, bytes]]]] = []
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.5):
                r = rk.raise_for(message)
                if r is not None:
                    records.append((r.key(), json.loads(r.value() or b"null"), list(r.headers() or [])))
                    last_new = time.monotonic()
            if until is not None and len(records) >= until:
                break
            if until is None and time.monotonic() - last_new > idle:
                break
        return records
    finally:
        consumer.close()


def produce(stack: Stack, topic: str, records: Iterable[tuple[str, bytes]]) -> int:
    """Send (key, value) records to `topic` and wait until Kafka has every one; returns how many."""
    producer = rk.producer(stack.kafka(), client_id="test-feed")
    errors: list[rk.KafkaError] = []

    def settled(error: rk.KafkaError | None, _message: rk.Message) -> None:
        if error is not None:
            errors.append(error)

    sent = 0
    for key, value in records:
        rk.produce_waiting(producer, topic, key=key.encode(), value=value, on_delivery=settled)
        sent += 1
    left = producer.flush(60)
    assert left == 0, f"Kafka did not acknowledge {left} of {sent} records to {topic} within 60 s"
    assert not errors, f"Kafka refused {len(errors)} records to {topic}, e.g. {errors[0]}"
    return sent
