"""Test harness: the real local stack, started once per session through the project's own scripts.

Tests under tests/integration and tests/e2e use the `stack` fixture (directly or through `mqtt`,
`kafka_bootstrap`, `database_url`). It runs `infra/stack up`, exactly what a person runs, which
reuses services that are already up. With VAKTROM_TEST_STACK=reuse it starts nothing and uses
what runs. Tests use the stack's test database (`vaktrom_test`), never the demo's
(infra/stackenv.py). When a service cannot be started or reached the test *fails* with the reason
and the service's log tail; it never skips.

Every test gets its own names (`unique`): MQTT topics, Kafka topics and patient ids never collide.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "infra"))
import stackenv  # noqa: E402  (infra/ holds scripts, not a package)
from topics import delete_namespaces  # noqa: E402

from runtime.settings import ConfigError, KafkaSettings  # noqa: E402
from tests.support.keycloak import Keycloak, start_keycloak  # noqa: E402
from tests.support.worktree import changed_between, tracked_changes  # noqa: E402

STATE = stackenv.state_dir()
SERVICE_DIRS = ("integration", "e2e")


def pytest_configure(config: pytest.Config) -> None:
    """A process of the run that crashes in native code (librdkafka, RocksDB) leaves a core file in its
    working directory, for `gdb python core`: a segmentation fault shows no Python traceback of use."""
    soft, hard = resource.getrlimit(resource.RLIMIT_CORE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(f"/tests/{d}/" in str(item.path) for d in SERVICE_DIRS):
            item.add_marker(pytest.mark.services)
    # tests marked `last` look at what the whole run left behind (the privacy scan)
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


@pytest.fixture(scope="session", autouse=True)
def _no_tracked_file_written() -> Iterator[None]:
    """No test writes a tracked file: the tracked files' state after the session is the state before
    it (a developer's own uncommitted edits are in both, so they do not count)."""
    before = tracked_changes(REPO)
    yield
    after = tracked_changes(REPO)
    if before is None or after is None:
        return
    changed = changed_between(before, after)
    assert not changed, (
        f"the test session changed tracked files: {', '.join(changed)}. A test writes to tmp_path or its "
        "`artefacts` folder (tests/artefacts/, untracked), never into the repository; `git diff` shows "
        "what was written (if you edited one of these yourself during the run, run the tests again)"
    )


def _masked(url: str) -> str:
    """A database URL with its password hidden, for messages and reprs."""
    return re.sub(r":[^:@/]*@", ":***@", url)


@dataclass(frozen=True)
class Stack:
    """Where the running local stack listens (from .local/stack.env, written by `infra/stack up`).

    Its repr, which pytest prints with a failing test's arguments, shows no password or key.
    """

    mqtt_host: str
    mqtt_port: int
    kafka_bootstrap: str
    database_url: str = field(repr=False)
    values: dict[str, str] = field(repr=False)  # all of stack.env: service credentials, the identity key

    def __repr__(self) -> str:
        return (
            f"Stack(mqtt={self.mqtt_host}:{self.mqtt_port}, kafka={self.kafka_bootstrap}, "
            f"database={_masked(self.database_url)})"
        )

    @classmethod
    def from_env(cls, env: dict[str, str]) -> Stack:
        """From the variables in .local/stack.env."""
        return cls(
            mqtt_host=env["VAKTROM_MQTT_HOST"],
            mqtt_port=int(env["VAKTROM_MQTT_PORT"]),
            kafka_bootstrap=env["VAKTROM_KAFKA_BOOTSTRAP"],
            database_url=env["VAKTROM_DATABASE_URL"],
            values=env,
        )

    @property
    def env(self) -> dict[str, str]:
        return dict(self.values)

    def kafka(self, stage: str = "admin", *, prefix: str = "") -> KafkaSettings:
        """How a client signs in to the local Kafka as `stage`'s principal; "admin" is the local
        stack's super user, which tests use to feed and read topics (docs/kafka-security.md)."""
        return KafkaSettings.from_env(
            {**self.values, **self.kafka_env(stage), "VAKTROM_TOPIC_PREFIX": prefix}
        )

    def kafka_env(self, stage: str) -> dict[str, str]:
        """VAKTROM_KAFKA_USERNAME/PASSWORD of `stage`'s principal, for a stage's process."""
        return stackenv.kafka_principal(self.values, stage)

    @property
    def mqtt_auth(self) -> tuple[str, str]:
        """The local-test account: may publish and subscribe anywhere, exists on the local stack only
        (tests stand in for kits under their own topic roots; kits and stages get narrow accounts)."""
        values = self.values
        return values["VAKTROM_STACK_MQTT_TEST_USERNAME"], values["VAKTROM_STACK_MQTT_TEST_PASSWORD"]


def stack_command(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "infra" / "stack"), *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def _read_env_file() -> dict[str, str]:
    """stack.env with the test database in VAKTROM_DATABASE_URL: tests never write to the demo's."""
    try:
        return stackenv.for_tests(STATE)
    except stackenv.StackEnvError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def stack() -> Stack:
    """The real Mosquitto, Kafka and PostgreSQL, started (or reused) through infra/stack."""
    if os.environ.get("VAKTROM_TEST_STACK", "start") != "reuse":
        result = stack_command("up")
        if result.returncode != 0:
            pytest.fail(
                "the local stack did not start, so tests that need real services cannot run.\n"
                f"`infra/stack up` said:\n{result.stdout}\n{result.stderr}\n"
                "Fix the cause above (or see `make logs`), then run the tests again.",
                pytrace=False,
            )
    return Stack.from_env(_read_env_file())


def _require_healthy(service: str, stack: Stack) -> None:
    """Fail with a message a person can act on when one service of the stack does not answer."""
    result = stack_command("status", timeout=60)
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith(service)), "")
    if "healthy" in line and "UNHEALTHY" not in line:
        return
    state = line.split(None, 5)[-1] if line.count(" ") else "no status"
    logs = "\n".join(stack_command("logs", service, timeout=30).stdout.splitlines()[-12:])
    addresses = {
        "mosquitto": f"{stack.mqtt_host}:{stack.mqtt_port}",
        "kafka": stack.kafka_bootstrap,
        "postgres": _masked(stack.database_url),
    }
    pytest.fail(
        f"{service} at {addresses[service]} is not available (infra/stack status: {state.strip()}).\n"
        f"Start it with `infra/stack up {service}` (or `make stack-up`) and run the tests again.\n"
        f"Last lines of its log:\n{logs}",
        pytrace=False,
    )


@dataclass(frozen=True)
class Broker:
    """The local Mosquitto and its local-test account (anonymous clients are refused)."""

    host: str
    port: int
    username: str
    password: str = field(repr=False)

    def login(self, client: Any) -> Any:
        """Set the service account's credentials on a paho client; returns the client."""
        client.username_pw_set(self.username, self.password)
        return client

    @property
    def sim_env(self) -> dict[str, str]:
        """What gateway-sim reads for its pooled connections."""
        return {"VAKTROM_SIM_MQTT_USERNAME": self.username, "VAKTROM_SIM_MQTT_PASSWORD": self.password}


@pytest.fixture(scope="session")
def keycloak(pytestconfig: pytest.Config) -> Iterator[Keycloak]:
    """The OpenID provider of the single-sign-on tests (tests/support/keycloak.py), started once per
    session and only by the tests that ask for it (slow: about a minute on two cores); its progress
    is shown as it happens, past pytest's capture."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")

    def say(line: str) -> None:
        with capture.global_and_fixture_disabled():
            print(line, file=sys.stderr, flush=True)

    provider = start_keycloak(say=say)
    yield provider
    provider.stop()


@pytest.fixture
def mqtt(stack: Stack) -> Broker:
    _require_healthy("mosquitto", stack)
    return Broker(stack.mqtt_host, stack.mqtt_port, *stack.mqtt_auth)


@pytest.fixture
def kafka_bootstrap(stack: Stack) -> str:
    _require_healthy("kafka", stack)
    return stack.kafka_bootstrap


@pytest.fixture
def database_url(stack: Stack) -> str:
    _require_healthy("postgres", stack)
    return stack.database_url


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> str:
    """A short name no other test (or earlier run) uses: for topics, patient ids, tables."""
    test = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:24]
    name = f"t{uuid.uuid4().hex[:8]}-{test}"
    if "stack" in request.fixturenames:
        request.node.stash.setdefault(_NAMESPACES, []).append(name)
    return name


# ------------------------------------------------------------------ the topics tests leave behind
# Each test's Kafka topics (its namespace, faust's changelogs included) are deleted when the session
# ends, if the test passed: a run makes about 300, and a local Kafka that keeps them all grows slower
# to start and to answer. A failed test's topics stay for inspection (`python infra/topics.py
# --delete NAME` removes them); VAKTROM_TEST_KEEP_TOPICS=1 keeps every test's.
_NAMESPACES = pytest.StashKey[list[str]]()
_FAILED = pytest.StashKey[bool]()
_finished: list[pytest.Item] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[Any]:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    if report.when == "teardown" and _NAMESPACES in item.stash:
        _finished.append(item)
    return report


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _finished or os.environ.get("VAKTROM_TEST_KEEP_TOPICS") == "1":
        return
    passed = [n for item in _finished if not item.stash.get(_FAILED, False) for n in item.stash[_NAMESPACES]]
    kept = sum(len(item.stash[_NAMESPACES]) for item in _finished) - len(passed)
    try:
        env = stackenv.read(STATE)
        kafka = KafkaSettings.from_env({**env, **stackenv.kafka_principal(env, "admin")})
    except (stackenv.StackEnvError, KeyError, ConfigError):
        return
    line = delete_namespaces(kafka, passed) if passed else "no passed test's topics to delete"
    if kept:
        line += (
            f"; kept {kept} namespaces of failed tests (`python infra/topics.py --delete NAME` removes one)"
        )
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"vaktrom: {line}")


@pytest.fixture
def artefacts(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A folder under tests/artefacts/ for screenshots and reports a test leaves behind."""
    path = REPO / "tests" / "artefacts" / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
    path.mkdir(parents=True, exist_ok=True)
    return path
