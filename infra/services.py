"""The three real services of the local stack: Mosquitto, Apache Kafka (KRaft; kafka_cluster.py) and
PostgreSQL.

Each knows how to configure, start, wait for, check and stop itself under one state folder
(default `.local/`); the plumbing they share is in processes.py.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path

from kafka_cluster import Kafka
from mosquitto_init import MQTT_ADMIN, MQTT_BRIDGE, dynsec_config, upgrade_config
from processes import (
    REPO,
    Health,
    Service,
    StackError,
    as_user,
    chown_tree,
    log_tail,
    pid_alive,
    service_user,
)
from tls import client_certificate, ensure_server_certificates

from contracts.mqtt_accounts import HEALTH, LOAD, LOCAL_TEST, SERVICE_ACCOUNTS

__all__ = ["LOAD", "LOCAL_TEST", "MQTT_ADMIN", "MQTT_BRIDGE", "Kafka", "Mosquitto", "Postgres"]


# ------------------------------------------------------------------ Mosquitto
DYNSEC_PLUGIN_GLOBS = ("/usr/lib/*/mosquitto_dynamic_security.so", "/usr/lib/mosquitto_dynamic_security.so")


def dynsec_plugin() -> str:
    for pattern in DYNSEC_PLUGIN_GLOBS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    raise StackError(
        "Mosquitto's dynamic security plugin (mosquitto_dynamic_security.so) is not installed; "
        "run infra/bootstrap (the Debian mosquitto package ships it)"
    )


class Mosquitto(Service):
    """Plain MQTT on `port` (loopback, development), MQTT over TLS on `tls_port` (kits verify the
    broker against tls/ca.crt) and on `mtls_port` the same with a client certificate required."""

    name = "mosquitto"

    def __init__(self, *, state: Path, host: str, port: int, tls_port: int, mtls_port: int) -> None:
        super().__init__(state=state, host=host, port=port)
        self.tls_port, self.mtls_port = tls_port, mtls_port

    @property
    def tls_dir(self) -> Path:
        return self.home / "tls"

    @property
    def credentials_file(self) -> Path:
        return self.home / "credentials.json"

    def credentials(self) -> dict[str, str]:
        """username -> password of the accounts infra/stack created (made once, kept across restarts)."""
        try:
            found = json.loads(self.credentials_file.read_text())
        except (OSError, ValueError):
            found = {}
        wanted = {a.username for a in SERVICE_ACCOUNTS}
        return found if isinstance(found, dict) and set(found) >= wanted else {}

    def prepare(self) -> None:
        data = self.home / "data"
        data.mkdir(parents=True, exist_ok=True)
        user = service_user("mosquitto")
        dynsec = data / "dynamic-security.json"
        # One account per stage (contracts.mqtt_accounts), with the local-only ones; their rules
        # cover every topic root NAME/v1 and share group, since each test uses its own.
        scope = {"root": "+/v1", "group": "+"}
        try:
            kept = json.loads(self.credentials_file.read_text()) if dynsec.exists() else {}
        except (OSError, ValueError):
            kept = {}
        passwords = {a.username: kept.get(a.username) or secrets.token_urlsafe(24) for a in SERVICE_ACCOUNTS}
        if kept != passwords:
            fd = os.open(self.credentials_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                json.dump(passwords, out)
        if kept and dynsec.exists():
            # An earlier broker's identities (its kits) stay; new accounts join, kits get bound.
            doc = json.loads(dynsec.read_text())
            upgrade_config(doc, passwords, **scope)
            dynsec.write_text(json.dumps(doc, indent=1))
        else:
            dynsec.write_text(json.dumps(dynsec_config(passwords, **scope), indent=1))
        if ensure_server_certificates(self.tls_dir, sorted({self.host, "localhost", "127.0.0.1"})):
            client_certificate(self.tls_dir, "vaktrom-health")
        conf = self.home / "mosquitto.conf"
        template = (REPO / "infra" / "mosquitto" / "mosquitto.conf").read_text()
        conf.write_text(
            template.replace("@PORT@", str(self.port))
            .replace("@TLS_PORT@", str(self.tls_port))
            .replace("@MTLS_PORT@", str(self.mtls_port))
            .replace("@TLS_DIR@", str(self.tls_dir))
            .replace("@HOST@", self.host)
            .replace("@DATA@", f"{data}/")
            .replace("@USER@", user.pw_name if user else "root")
            .replace("@DYNSEC_PLUGIN@", dynsec_plugin())
            .replace("@DYNSEC_CONFIG@", str(dynsec))
        )
        chown_tree(data, user)
        chown_tree(self.tls_dir, user)

    def spawn(self) -> int:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(binary).exists():
            raise StackError("mosquitto is not installed; run infra/bootstrap (or `make bootstrap`)")
        return self._popen([binary, "-c", str(self.home / "mosquitto.conf")])

    def check(self, timeout: float) -> Health:
        """A real publish/subscribe round trip at QoS 1."""
        import paho.mqtt.client as mqtt  # noqa: PLC0415 - only the venv has it; bootstrap installs it
        from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

        topic = f"vaktrom/health/{uuid.uuid4().hex}"
        got = threading.Event()
        subscribed = threading.Event()
        assert HEALTH.client_id is not None
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=HEALTH.client_id)
        password = self.credentials().get(HEALTH.username)
        if password is None:
            return Health(
                False,
                f"no health-check credentials in {self.credentials_file}; run `infra/stack up mosquitto`",
            )
        client.username_pw_set(HEALTH.username, password)
        refused: list[str] = []
        client.on_connect = lambda _c, _u, _f, reason, _p: (
            refused.append(str(reason)) if reason.is_failure else None
        )
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
                if refused:
                    return Health(False, f"the broker refused the health-check account: {refused[0]}")
                return Health(False, "connected, but the subscription was not acknowledged")
            client.publish(topic, b"ping", qos=1)
            if not got.wait(timeout):
                return Health(False, "connected, but a published message did not come back")
            took = 1000 * (time.monotonic() - began)
        finally:
            client.disconnect()
            client.loop_stop()
        tls = self._tls_handshake(timeout)
        return Health(tls is None, f"pub/sub round trip {took:.0f} ms; {tls or 'TLS listeners verified'}")

    def _tls_handshake(self, timeout: float) -> str | None:
        """None when both TLS listeners present a certificate our CA verifies for this host (and the
        client-certificate listener accepts the stack's own one)."""
        context = ssl.create_default_context(cafile=str(self.tls_dir / "ca.crt"))
        context.load_cert_chain(self.tls_dir / "vaktrom-health.crt", self.tls_dir / "vaktrom-health.key")
        for port in (self.tls_port, self.mtls_port):
            try:
                with (
                    socket.create_connection((self.host, port), timeout=timeout) as raw,
                    context.wrap_socket(raw, server_hostname=self.host),
                ):
                    pass
            except (OSError, ssl.SSLError) as exc:
                return f"TLS listener {self.host}:{port} failed: {exc}"
        return None


# ------------------------------------------------------------------ PostgreSQL
class Postgres(Service):
    """A private PostgreSQL cluster under the state folder, never the system cluster.

    Flavour `timescaledb` (the default) preloads the TimescaleDB extension that infra/bootstrap
    builds and creates it in each database, so the migrations take their hypertable branches;
    `plain` is stock PostgreSQL in its own folder (postgres-plain/), for the plain-path tests."""

    name = "postgres"

    def __init__(
        self,
        *,
        state: Path,
        host: str,
        port: int,
        database: str,
        role: str,
        test_database: str,
        flavour: str = "timescaledb",
    ) -> None:
        self.flavour = flavour
        self.name = "postgres" if flavour == "timescaledb" else f"postgres-{flavour}"
        super().__init__(state=state, host=host, port=port)
        self.data = self.home / "data"
        self.sock = self.home / "sock"
        self.database = database
        self.test_database = test_database  # the tests' and benchmarks' own, beside the demo's
        self.role = role  # owns the databases and their tables; runs the migrations
        self.app_role = f"{role}_app"  # what the stages connect as: data only, no DDL, no superuser
        self.audit_role = f"{role}_audit"  # owns the audit schema; nobody logs in as it
        self.password_file = state / "secrets" / "postgres-password"
        self.app_password_file = state / "secrets" / "postgres-app-password"
        self.user = service_user("postgres")
        self.bin = _postgres_bin()
        # pg_ctl daemonises; spawn() reads the postmaster's pid from its own lock file
        self.postmaster_pid = self.data / "postmaster.pid"
        self.log = self.home / "postgres.log"
        # WAL archive for restores (docs/backup-restore.md); `infra/backup.py` reads the same place.
        # The plain test cluster keeps its own: both clusters name their segments alike.
        self.wal_archive = state / "backup" / ("wal" if flavour == "timescaledb" else f"wal-{flavour}")

    @property
    def password(self) -> str:
        return _secret(self.password_file)

    @property
    def app_password(self) -> str:
        return _secret(self.app_password_file)

    @property
    def url(self) -> str:
        """The demo database as the application role (what the stages use)."""
        return self.url_of(self.database, owner=False)

    @property
    def test_url(self) -> str:
        return self.url_of(self.test_database, owner=False)

    @property
    def owner_url(self) -> str:
        """The demo database as its owner: migrations, and tests that need DDL."""
        return self.url_of(self.database)

    @property
    def test_owner_url(self) -> str:
        return self.url_of(self.test_database)

    def url_of(self, database: str, *, owner: bool = True) -> str:
        role, password = (self.role, self.password) if owner else (self.app_role, self.app_password)
        return f"postgresql://{role}:{password}@{self.host}:{self.port}/{database}"

    def prepare(self) -> None:
        self.sock.mkdir(parents=True, exist_ok=True)
        self.sock.chmod(0o700)  # the superuser connects over this socket without a password
        self.wal_archive.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.wal_archive.parent.chmod(0o700)
        chown_tree(self.wal_archive.parent, self.user)
        chown_tree(self.home, self.user)
        if not (self.data / "PG_VERSION").exists():
            result = self._run(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--no-instructions",
                ],
            )
            if result.returncode != 0:
                raise StackError(f"initdb failed for {self.data}:\n{result.stdout}{result.stderr}")
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write("\ninclude_if_exists = 'vaktrom.conf'\n")
        tuning = (REPO / "infra" / "postgres" / "postgresql.conf").read_text()
        (self.data / "vaktrom.conf").write_text(
            tuning.replace("@HOST@", self.host)
            .replace("@PORT@", str(self.port))
            .replace("@SOCK@", str(self.sock))
            .replace("@WAL@", str(self.wal_archive))
            + (TIMESCALEDB_CONF if self.flavour == "timescaledb" else "")
        )
        chown_tree(self.home, self.user)

    def _clear_stale_lock(self) -> None:
        """After a crash the lock file names a postmaster that is gone, or lingers as a zombie until
        its parent reaps it; PostgreSQL takes a zombie for a live postmaster and refuses to start.
        Wait a little for it to go, then remove a lock whose process holds nothing any more."""
        try:
            pid = int(self.postmaster_pid.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        deadline = time.monotonic() + 10.0
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            if pid_alive(pid):
                return  # a running postmaster: pg_ctl says so, with its own message
            time.sleep(0.1)
        if not pid_alive(pid):
            self.postmaster_pid.unlink(missing_ok=True)

    def spawn(self) -> int:
        self._clear_stale_lock()
        result = self._run(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.home / "postgres.log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        if result.returncode != 0:
            detail = f"{result.stdout}{result.stderr}\n{log_tail(self.log)}"
            raise StackError(f"PostgreSQL did not start:\n{detail}")
        return int(self.postmaster_pid.read_text().split()[0])

    def _run(self, cmd: list[str]) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool as the cluster's owner (the postgres user when we are root)."""
        return subprocess.run(as_user(cmd, self.user), capture_output=True, text=True, check=False)

    def check(self, timeout: float) -> Health:
        result = subprocess.run(
            [
                str(self.bin / "pg_isready"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-t",
                str(max(1, int(timeout))),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        return Health(result.returncode == 0, result.stdout.strip().split(" - ")[-1] or "no answer")

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        result = self._run(
            [
                str(self.bin / "psql"),
                "-h",
                str(self.sock),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-qAt",
                "-c",
                sql,
            ],
        )
        if result.returncode != 0:
            raise StackError(f"psql failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def after_ready(self) -> None:
        """The roles and databases; the schema and its grants come from the migrations.

        Three roles, none a superuser (docs/console-security.md): the owner runs the migrations,
        the application role reads and writes data, and the audit role owns the audit log, of which
        the application may only insert and read. The owner is a member of the audit role so that
        migrations can create the audit schema; the application role is a member of neither."""
        # role and database names are constants of ours, never user input
        for role, password, options in (
            (self.role, self.password, "LOGIN"),
            (self.app_role, self.app_password, "LOGIN"),
            (self.audit_role, None, "NOLOGIN"),
        ):
            if not self.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{role}'"):  # noqa: S608
                self.psql(f"CREATE ROLE {role} {options}")
            given = f"PASSWORD '{password.replace(chr(39), chr(39) * 2)}'" if password else ""
            self.psql(f"ALTER ROLE {role} {options} NOSUPERUSER NOCREATEDB NOCREATEROLE {given}")
        self.psql(f"GRANT {self.audit_role} TO {self.role}")
        for database in (self.database, self.test_database):
            if not self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'"):  # noqa: S608
                self.psql(f"CREATE DATABASE {database} OWNER {self.role}")
            if self.flavour == "timescaledb":
                # Only a superuser may create it (it is not a trusted extension); the owner's
                # migrations then find it, as they do in the compose image, which does the same.
                self.psql("CREATE EXTENSION IF NOT EXISTS timescaledb", database=database)

    def stop(self, *, timeout: float = 30.0) -> bool:
        """pg_ctl's fast shutdown first; the base class's signals only if the postmaster is still up."""
        if self.pid() is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        self._run(
            [
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.data),
                "-m",
                "fast",
                "-w",
                "-t",
                str(int(timeout)),
                "stop",
            ],
        )
        return super().stop(timeout=timeout) or True


# Appended to vaktrom.conf for the timescaledb flavour (infra/bootstrap builds the extension).
TIMESCALEDB_CONF = """
# TimescaleDB (docs/archive.md): hypertables, compression, retention and continuous aggregates.
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
timescaledb.max_background_workers = 5  # a scheduler per database, jobs; within max_worker_processes
"""


def _secret(path: Path) -> str:
    """A password made once under the state folder (0600) and kept across restarts."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()


def _postgres_bin() -> Path:
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name)
    )
    if candidates:
        return candidates[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise StackError(
        "PostgreSQL server binaries not found; run infra/bootstrap (installs the postgresql package)"
    )
