"""The three real services of the local stack: Mosquitto, Apache Kafka (KRaft) and PostgreSQL.

Each service knows how to configure, start, wait for, check and stop itself, under one state folder
(default `.local/`). A service started here writes a pid file; `stop` only ever signals a process
whose pid file we wrote *and* whose command line names our state folder, so `down` never touches a
system broker or database that happens to run on the same machine.
"""

from __future__ import annotations

import base64
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Health", "Kafka", "Mosquitto", "Postgres", "Service", "StackError", "tree_memory_kib"]

REPO = Path(__file__).resolve().parent.parent


class StackError(Exception):
    """A service could not be configured, started or reached; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    detail: str


# ------------------------------------------------------------------ process helpers
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("State:"):
                return line.split()[1]
    except OSError:
        return "X"
    return "?"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # the parent pid is the 2nd field after the parenthesised command name
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry.name))
    return kids


def tree_memory_kib(pid: int) -> tuple[int, int]:
    """(current RSS, sum of peak RSS) in KiB over a process and its children."""
    rss = hwm = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm += int(line.split()[1])
        except OSError:
            continue
    return rss, hwm


def _service_user(name: str) -> pwd.struct_passwd | None:
    """The system user a service drops to when we run as root (PostgreSQL refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise StackError(f"running as root, but there is no '{name}' user; run infra/bootstrap first") from None


def _chown_tree(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, user.pw_uid, user.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def _as_user(cmd: list[str], user: pwd.struct_passwd | None) -> list[str]:
    return cmd if user is None else ["runuser", "-u", user.pw_name, "--", *cmd]


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text[-lines:])


class Service:
    """Common start/stop/status plumbing; subclasses fill in the specifics."""

    name: str = ""

    def __init__(self, *, state: Path, host: str, port: int) -> None:
        self.state = state
        self.host = host
        self.port = port
        self.home = state / self.name
        self.pid_file = state / "run" / f"{self.name}.pid"
        self.log = state / "logs" / f"{self.name}.log"

    # -- what subclasses provide
    def prepare(self) -> None:
        """Write configuration and initialise storage; idempotent."""

    def spawn(self) -> int:
        raise NotImplementedError

    def check(self, timeout: float) -> Health:
        raise NotImplementedError

    # -- shared
    def pid(self) -> int | None:
        """The pid of the process we started, if it is still ours and alive."""
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        if not _pid_alive(pid) or str(self.state) not in _cmdline(pid):
            return None
        return pid

    def start(self, *, timeout: float) -> float:
        """Start (unless running) and wait until really ready; returns seconds to ready."""
        began = time.monotonic()
        pid = self.pid()
        if pid is None:
            self.home.mkdir(parents=True, exist_ok=True)
            self.pid_file.parent.mkdir(parents=True, exist_ok=True)
            self.log.parent.mkdir(parents=True, exist_ok=True)
            self.prepare()
            pid = self.spawn()
            self.pid_file.write_text(f"{pid}\n")
        self.wait_ready(pid, timeout=timeout)
        self.after_ready()
        return time.monotonic() - began

    def after_ready(self) -> None:
        """Create what the stages need (topics, database, schema); idempotent."""

    def wait_ready(self, pid: int, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = Health(False, "not checked yet")
        while time.monotonic() < deadline:
            # the pid, not self.pid(): right after the fork the command line is still Python's
            if not _pid_alive(pid):
                raise StackError(
                    f"{self.name} exited during start-up. Last lines of {self.log}:\n{log_tail(self.log)}"
                )
            last = self.check(timeout=min(3.0, max(0.5, deadline - time.monotonic())))
            if last.ok:
                return
            time.sleep(0.25)
        raise StackError(
            f"{self.name} did not become ready within {timeout:.0f} s ({last.detail}). "
            f"Last lines of {self.log}:\n{log_tail(self.log)}"
        )

    def stop(self, *, timeout: float = 30.0) -> bool:
        """Stop our process (SIGTERM, then SIGKILL after `timeout`); False if it was not running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
            while _pid_alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return True

    def _popen(self, cmd: list[str], *, env: dict[str, str] | None = None) -> int:
        with self.log.open("ab") as out:
            out.write(f"\n---- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {self.name}\n".encode())
            out.flush()
            proc = subprocess.Popen(  # noqa: S603 - fixed argument list built from our own settings
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.home, env=env,
            )
        # Reap the child when it exits so it never lingers as a zombie that looks alive.
        threading.Thread(target=proc.wait, daemon=True).start()
        return proc.pid


# ------------------------------------------------------------------ Mosquitto
class Mosquitto(Service):
    name = "mosquitto"

    def prepare(self) -> None:
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        user = _service_user("mosquitto")
        conf = self.home / "mosquitto.conf"
        template = (REPO / "infra" / "mosquitto" / "mosquitto.conf").read_text()
        conf.write_text(
            template.replace("@PORT@", str(self.port)).replace("@HOST@", self.host)
            .replace("@DATA@", f"{data}/").replace("@USER@", user.pw_name if user else "root")
        )
        _chown_tree(data, user)

    def spawn(self) -> int:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise StackError("mosquitto is not installed; run infra/bootstrap (or `make bootstrap`)")
        return self._popen([binary, "-c", str(self.home / "mosquitto.conf")])

    def check(self, timeout: float) -> Health:
        """A real publish/subscribe round trip at QoS 1."""
        import paho.mqtt.client as mqtt  # noqa: PLC0415 - only the venv has it; bootstrap installs it

        topic = f"vaktrom/health/{uuid.uuid4().hex}"
        got = threading.Event()
        subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"vaktrom-health-{uuid.uuid4().hex[:8]}")
        client.on_message = lambda _c, _u, _m: got.set()
        client.on_subscribe = lambda *_args: subscribed.set()
        began = time.monotonic()
        try:
            client.connect(self.host, self.port, keepalive=10)
        except OSError as exc:
            return Health(False, f"cannot connect to {self.host}:{self.port}: {exc}")
        client.loop_start()
        try:
            client.subscribe(topic, qos=1)
            if not subscribed.wait(timeout):
                return Health(False, "connected, but the subscription was not acknowledged")
            client.publish(topic, b"ping", qos=1)
            if not got.wait(timeout):
                return Health(False, "connected, but a published message did not come back")
            return Health(True, f"pub/sub round trip {1000 * (time.monotonic() - began):.0f} ms")
        finally:
            client.disconnect()
            client.loop_stop()


# ------------------------------------------------------------------ Kafka
class Kafka(Service):
    """A single-node Kafka 4 in KRaft combined mode (broker and controller in one JVM)."""

    name = "kafka"

    def __init__(self, *, state: Path, host: str, port: int, controller_port: int, heap: str,
                 partitions: int, topics: list[tuple[str, int, dict[str, str]]]) -> None:
        super().__init__(state=state, host=host, port=port)
        self.controller_port = controller_port
        self.heap = heap
        self.partitions = partitions
        self.topics = topics
        self.libs = state / "kafka" / "libs"

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def _java(self, main: str, *args: str, jvm: list[str] | None = None) -> list[str]:
        if not (self.libs / ".stamp").exists():
            raise StackError(f"the Kafka jars are missing from {self.libs}; run infra/bootstrap first")
        java = shutil.which("java") or "java"
        log4j = REPO / "infra" / "kafka" / "log4j2.properties"
        return [java, *(jvm or []), f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{self.libs}/*", main, *args]

    def prepare(self) -> None:
        data = self.home / "data"
        conf = self.home / "server.properties"
        template = (REPO / "infra" / "kafka" / "server.properties").read_text()
        conf.write_text(
            template.replace("@HOST@", self.host).replace("@PORT@", str(self.port))
            .replace("@CONTROLLER_PORT@", str(self.controller_port)).replace("@DATA@", str(data))
            .replace("@PARTITIONS@", str(self.partitions))
        )
        if (data / "meta.properties").exists():
            return
        cluster_file = self.home / "cluster-id"
        if not cluster_file.exists():
            # A Kafka Uuid: 16 random bytes, URL-safe base64 without padding.
            cluster_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode())
        result = subprocess.run(  # noqa: S603
            self._java("kafka.tools.StorageTool", "format", "-t", cluster_file.read_text().strip(),
                       "-c", str(conf), "--ignore-formatted"),
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage in {data} failed:\n{result.stdout}{result.stderr}")

    def spawn(self) -> int:
        jvm = [
            f"-Xms{self.heap}", f"-Xmx{self.heap}",  # a 2-core machine shares its memory with everything else
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent", "-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
        ]
        return self._popen(self._java("kafka.Kafka", str(self.home / "server.properties"), jvm=jvm))

    def _admin(self, timeout: float):  # type: ignore[no-untyped-def]  # kafka-python is untyped
        from kafka import KafkaAdminClient  # noqa: PLC0415

        return KafkaAdminClient(
            bootstrap_servers=self.bootstrap, client_id="vaktrom-stack",
            request_timeout_ms=int(timeout * 1000), bootstrap_timeout_ms=int(timeout * 1000),
        )

    def check(self, timeout: float) -> Health:
        """A metadata request answered by the broker."""
        from kafka.errors import KafkaError  # noqa: PLC0415

        try:
            admin = self._admin(timeout)
        except (KafkaError, OSError, ValueError) as exc:
            return Health(False, f"no answer from {self.bootstrap}: {type(exc).__name__}")
        try:
            brokers = admin.describe_cluster().get("brokers", [])
            topics = [t for t in admin.list_topics() if not t.startswith("__")]
            return Health(bool(brokers), f"metadata: {len(brokers)} broker, {len(topics)} topics")
        except (KafkaError, OSError) as exc:
            return Health(False, f"metadata request failed: {type(exc).__name__}: {exc}")
        finally:
            admin.close()

    def after_ready(self) -> None:
        from kafka.admin import NewTopic  # noqa: PLC0415
        from kafka.errors import TopicAlreadyExistsError  # noqa: PLC0415

        admin = self._admin(10.0)
        try:
            existing = set(admin.list_topics())
            missing = [
                NewTopic(name, partitions, 1, topic_configs=config)
                for name, partitions, config in self.topics if name not in existing
            ]
            if missing:
                try:
                    admin.create_topics(missing, timeout_ms=15000)
                except TopicAlreadyExistsError:
                    pass  # another `up` raced us; the topics are there, which is all we need
        finally:
            admin.close()


# ------------------------------------------------------------------ PostgreSQL
class Postgres(Service):
    """A private PostgreSQL cluster under the state folder, never the system cluster."""

    name = "postgres"

    def __init__(self, *, state: Path, host: str, port: int, database: str, role: str) -> None:
        super().__init__(state=state, host=host, port=port)
        self.data = self.home / "data"
        self.sock = self.home / "sock"
        self.database = database
        self.role = role
        self.password_file = state / "secrets" / "postgres-password"
        self.user = _service_user("postgres")
        self.bin = _postgres_bin()
        # pg_ctl daemonises; the postmaster writes its own pid file, which we follow
        self.pid_file = self.data / "postmaster.pid"

    @property
    def password(self) -> str:
        if not self.password_file.exists():
            self.password_file.parent.mkdir(parents=True, exist_ok=True)
            self.password_file.touch(mode=0o600)
            self.password_file.write_text(secrets.token_urlsafe(24))
        return self.password_file.read_text().strip()

    @property
    def url(self) -> str:
        return f"postgresql://{self.role}:{self.password}@{self.host}:{self.port}/{self.database}"

    def prepare(self) -> None:
        self.sock.mkdir(parents=True, exist_ok=True)
        self.sock.chmod(0o700)  # the superuser connects over this socket without a password
        _chown_tree(self.home, self.user)
        if not (self.data / "PG_VERSION").exists():
            result = subprocess.run(  # noqa: S603
                _as_user([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                          "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256",
                          "--no-instructions"], self.user),
                capture_output=True, text=True, check=False,
            )
            if result.returncode != 0:
                raise StackError(f"initdb failed for {self.data}:\n{result.stdout}{result.stderr}")
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write("\ninclude_if_exists = 'vaktrom.conf'\n")
        tuning = (REPO / "infra" / "postgres" / "postgresql.conf").read_text()
        (self.data / "vaktrom.conf").write_text(
            tuning.replace("@HOST@", self.host).replace("@PORT@", str(self.port)).replace("@SOCK@", str(self.sock))
        )
        _chown_tree(self.home, self.user)

    def spawn(self) -> int:
        result = subprocess.run(  # noqa: S603
            _as_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.home / "postgres.log"),
                      "-w", "-t", "60", "start"], self.user),
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise StackError(
                f"PostgreSQL did not start:\n{result.stdout}{result.stderr}\n{log_tail(self.home / 'postgres.log')}"
            )
        return int(self.pid_file.read_text().split()[0])

    def start(self, *, timeout: float) -> float:
        self.log = self.home / "postgres.log"
        return super().start(timeout=timeout)

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if _pid_alive(pid) and str(self.data) in _cmdline(pid) else None

    def check(self, timeout: float) -> Health:
        result = subprocess.run(  # noqa: S603
            [str(self.bin / "pg_isready"), "-h", self.host, "-p", str(self.port), "-t", str(max(1, int(timeout)))],
            capture_output=True, text=True, check=False,
        )
        return Health(result.returncode == 0, result.stdout.strip().split(" - ")[-1] or "no answer")

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        result = subprocess.run(  # noqa: S603
            _as_user([str(self.bin / "psql"), "-h", str(self.sock), "-p", str(self.port), "-U", "postgres",
                      "-d", database, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql], self.user),
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise StackError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def after_ready(self) -> None:
        """The application role and database; the schema comes from the migrations."""
        password = self.password.replace("'", "''")
        if not self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{self.role}'"):
            self.psql(f"CREATE ROLE {self.role} LOGIN PASSWORD '{password}'")  # noqa: S608 - our own names
        else:
            self.psql(f"ALTER ROLE {self.role} PASSWORD '{password}'")
        if not self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'"):
            self.psql(f"CREATE DATABASE {self.database} OWNER {self.role}")

    def stop(self, *, timeout: float = 30.0) -> bool:
        if self.pid() is None:
            return False
        subprocess.run(  # noqa: S603
            _as_user([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", str(int(timeout)),
                      "stop"], self.user),
            capture_output=True, check=False,
        )
        if self.pid() is not None:
            return super().stop(timeout=timeout)
        return True


def _postgres_bin() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if candidates:
        return candidates[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise StackError("PostgreSQL server binaries not found; run infra/bootstrap (installs the postgresql package)")
