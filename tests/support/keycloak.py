"""A real OpenID provider for the single-sign-on tests: Keycloak (installed by infra/bootstrap under
.local/keycloak), started once per test session in development mode with its H2 database under
.local, the realm of infra/keycloak/realm-vaktrom.json imported afresh at each start.

Its port follows the stack's (VAKTROM_STACK_KAFKA_PORT - 19092 + 18080, so worktrees with their own
stack ports do not meet); its management port, where /health/ready answers, is the next one. When it
cannot start the test fails with the end of its log; it never skips.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

__all__ = ["CLIENT_ID", "CLIENT_SECRET", "PASSWORD", "REALM", "Keycloak", "start_keycloak"]

ROOT = Path(__file__).resolve().parents[2]
VERSION = "26.4.0"
REALM = "vaktrom"
REALM_FILE = ROOT / "infra" / "keycloak" / "realm-vaktrom.json"
CLIENT_ID = "vaktrom-console"
CLIENT_SECRET = "vaktrom-test-client-secret-local-only-0001"  # noqa: S105  (the test realm's client, on localhost only)
PASSWORD = "vaktrom-test-password"  # noqa: S105  (the test realm's users)
ADMIN_PASSWORD = "vaktrom-test-admin"  # noqa: S105  (the test Keycloak's bootstrap administrator)
START_TIMEOUT_S = 300.0  # the first start builds Keycloak's configuration: minutes on two shared cores


@dataclass
class Keycloak:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}/realms/{REALM}"

    def console_env(self) -> dict[str, str]:
        """The console's settings for this provider and the test realm's role names and claims."""
        return {
            "VAKTROM_OIDC_ISSUER": self.issuer,
            "VAKTROM_OIDC_CLIENT_ID": CLIENT_ID,
            "VAKTROM_OIDC_CLIENT_SECRET": CLIENT_SECRET,
            "VAKTROM_OIDC_ROLE_CLAIM": "vaktrom_roles",
            "VAKTROM_OIDC_TEAM_CLAIM": "team",
            "VAKTROM_OIDC_ROLE_MAP": (
                "sykepleier=nurse,koordinator=coordinator,lege=physician,systemansvarlig=admin"
            ),
            "VAKTROM_OIDC_CENTRE_ROLES": "coordinator,admin",
            "VAKTROM_OIDC_LABEL": "Test Hospital",
        }

    def admin(self) -> httpx.Client:
        """A client of the realm's admin API (as the bootstrap administrator), to change a user."""
        token = httpx.post(
            f"http://127.0.0.1:{self.port}/realms/master/protocol/openid-connect/token",
            data={"grant_type": "password", "client_id": "admin-cli", "username": "admin",
                  "password": ADMIN_PASSWORD},
            timeout=30,
        )  # fmt: skip
        token.raise_for_status()
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}/admin/realms/{REALM}",
            headers={"Authorization": f"Bearer {token.json()['access_token']}"},
            timeout=30,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _state() -> Path:
    return Path(os.environ.get("VAKTROM_STATE_DIR", ROOT / ".local"))


def _port() -> int:
    return int(os.environ.get("VAKTROM_STACK_KAFKA_PORT", "19092")) - 19092 + 18080


def _java_home(state: Path) -> str:
    """VAKTROM_KEYCLOAK_JAVA_HOME, else the Java 21+ infra/bootstrap noted, else the system's Java
    (Keycloak 26 is made for 21 and still starts on 17)."""
    noted = state / "keycloak" / "java_home"
    chosen = os.environ.get("VAKTROM_KEYCLOAK_JAVA_HOME") or (
        noted.read_text().strip() if noted.exists() else ""
    )
    if not chosen:
        java = shutil.which("java")
        chosen = str(Path(java).resolve().parents[1]) if java else ""
    if not chosen or not Path(chosen, "bin", "java").exists():
        pytest.fail(
            f"Keycloak needs Java (21 or newer) and none was found at {chosen or 'any place'}: install a "
            "JDK 21+ under /usr/lib/jvm and run infra/bootstrap again, or set VAKTROM_KEYCLOAK_JAVA_HOME",
            pytrace=False,
        )
    return chosen


def _tail(log: Path, lines: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop_left_over(pid_file: Path, home: Path) -> None:
    """A Keycloak this fixture started in an earlier run that was killed: end it (only if it is one)."""
    try:
        pid = int(pid_file.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if str(home).encode() in cmdline:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.5)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def start_keycloak(*, say: Callable[[str], None] = _stderr) -> Keycloak:
    """Start Keycloak with the test realm and wait until it is ready, saying how it goes."""
    state = _state()
    home = state / "keycloak" / f"keycloak-{VERSION}"
    if not (home / "bin" / "kc.sh").exists():
        pytest.fail(f"Keycloak {VERSION} is not installed at {home}: run infra/bootstrap", pytrace=False)
    java = _java_home(state)
    pid_file, log = state / "keycloak" / "keycloak.pid", state / "keycloak" / "keycloak.log"
    _stop_left_over(pid_file, home)
    data = home / "data"
    shutil.rmtree(data / "h2", ignore_errors=True)  # a fresh database: the realm file is imported anew
    shutil.rmtree(data / "import", ignore_errors=True)
    (data / "import").mkdir(parents=True)
    shutil.copy(REALM_FILE, data / "import" / REALM_FILE.name)
    port = _port()
    env = {**os.environ, "JAVA_HOME": java, "KC_BOOTSTRAP_ADMIN_USERNAME": "admin",
           "KC_BOOTSTRAP_ADMIN_PASSWORD": ADMIN_PASSWORD}  # fmt: skip
    args = [
        str(home / "bin" / "kc.sh"), "start-dev", "--import-realm", f"--http-port={port}",
        f"--http-management-port={port + 1}", "--http-host=127.0.0.1", "--health-enabled=true",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    pid_file.write_text(str(process.pid))
    keycloak = Keycloak(process, port, log)
    say(f"\nkeycloak: starting {VERSION} on port {port} (about a minute on two cores; log {log})")
    started, said = time.monotonic(), 0.0
    ready = f"http://127.0.0.1:{port + 1}/health/ready"
    while True:
        waited = time.monotonic() - started
        if process.poll() is not None:
            pytest.fail(
                f"Keycloak stopped while starting (exit {process.returncode}); log {log}:\n{_tail(log)}",
                pytrace=False,
            )
        try:
            if httpx.get(ready, timeout=2).status_code == 200:
                say(f"keycloak: ready after {waited:.0f} s")
                return keycloak
        except httpx.HTTPError:
            pass
        if waited > START_TIMEOUT_S:
            keycloak.stop()
            pytest.fail(
                f"Keycloak did not become ready on port {port} within {START_TIMEOUT_S:.0f} s; "
                f"log {log}:\n{_tail(log)}",
                pytrace=False,
            )
        if waited - said >= 10:
            said = waited
            say(f"keycloak: still starting ({waited:.0f} s)")
        time.sleep(1)
