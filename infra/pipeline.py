"""`make up`: the whole pipeline on the local stack, with a demo cohort streaming in real time.

    .local/venv/bin/python infra/pipeline.py [--patients heart_failure=8,copd=8,diabetes=8,infection=6]

Steps, each timed: enrol the demo cohort (patients, kits with their own broker identities, care
plans) through the registry; make the demo login; start the bridge, the monitor, the archive and
the response centre, each until its /health answers; then the kit simulator: nine days of
history as fast as the pipeline confirms, then real time with every kit measuring every two
minutes and the injected episodes at their peak, so that red and yellow alerts arrive within
minutes. It prints the console's address and the
demo login and runs until Ctrl-C or SIGTERM, which stops every stage (simulator first) cleanly.
A stage that exits on its own is started again with back-off, and the others keep running
(infra/supervisor.py); `make status` shows each stage's state and restarts.
Logs are in .local/logs/<stage>.log. The stack itself (Mosquitto, Kafka, PostgreSQL) is started
before by `infra/stack up` and keeps running; `make down` stops it.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from stackenv import hosted_registry, kafka_principal
from supervisor import Supervisor

from alerts import accounts
from contracts.mqtt_accounts import BRIDGE

REPO = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("VAKTROM_STATE_DIR", REPO / ".local")).resolve()
DEMO = STATE / "demo"
LOGS = STATE / "logs"
PY = sys.executable
KIT_PREFIX = "DEMO"
DEMO_USER = "demo"
# The cohort's team. The demo login works in it, so its queue holds the demo's patients and not the
# load kits that tests and benchmarks leave in the same database (those follow no team).
DEMO_TEAM = "demo"
HISTORY_DAYS = 9  # weight and SpO2 rules compare with >= 5 days of the patient's own baseline
LIVE_EVERY = "2m"


@dataclass
class Stage:
    name: str
    module: str
    health_port: int
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    def start(self, base: dict[str, str]) -> None:
        LOGS.mkdir(parents=True, exist_ok=True)
        log = (LOGS / f"{self.name}.log").open("ab")
        self.process = subprocess.Popen(
            [PY, "-m", self.module], env={**base, **self.env}, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop the stages in order
        )  # fmt: skip

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/health", timeout=2) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise SystemExit(
                    f"up: {self.name} exited with {self.process.returncode}; see {LOGS / self.name}.log"
                )
            if self.healthy():
                return
            time.sleep(0.5)
        raise SystemExit(f"up: {self.name} not healthy after {timeout:.0f} s; see {LOGS / self.name}.log")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _env() -> dict[str, str]:
    path = STATE / "stack.env"
    if not path.exists():
        raise SystemExit("up: the stack has not been started (infra/stack up)")
    values = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {**os.environ, **values, "PYTHONPATH": f"{REPO}:{REPO / 'gateway-sim'}"}


def _run(step: str, cmd: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"up: {step} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout.strip()


def _timed(label: str, began: float) -> None:
    print(f"    {label} ({time.monotonic() - began:.1f} s)", flush=True)


def enrol(env: dict[str, str], patients: str, seed: int) -> Path:
    """The demo cohort in the registry (patients, kits, broker identities, care plans); idempotent."""
    DEMO.mkdir(parents=True, exist_ok=True)
    dry = DEMO / "plan"
    plan = [PY, "-m", "gateway_sim", "run", "--patients", patients, "--seed", str(seed),
            "--kit-prefix", KIT_PREFIX, "--days", "2", "--dry-run", "--quiet", "--out", str(dry)]  # fmt: skip
    _run("the cohort plan", plan, env)
    credentials = DEMO / "credentials.json"
    out = _run("the registry", [PY, "-m", "registry", "kit", "cohort", str(dry / "enrolment.json"),
                                "--credentials-out", str(credentials), "--team", DEMO_TEAM],
               {**env, **kafka_principal(env, "registry")})  # fmt: skip
    print(f"    {out}", flush=True)
    return credentials


def demo_login(env: dict[str, str]) -> str:
    """The demo coordinator's password (made once, kept in .local/demo/login)."""
    saved = DEMO / "login"
    if saved.exists():
        # a login made before it was bound to the demo team saw every team's alerts: bind it through
        # the response centre's accounts (its sessions end, as on any change of team)
        with psycopg.connect(env["VAKTROM_DATABASE_URL"], autocommit=True) as conn:
            found = [u for u in accounts.users(conn) if u["username"] == DEMO_USER]
            if found and found[0]["team_id"] is None:
                accounts.change_role(
                    conn, DEMO_USER, role=accounts.Role(found[0]["role"]), team_id=DEMO_TEAM, by="demo set-up"
                )
        return saved.read_text().strip()
    password = secrets.token_urlsafe(12)
    add = [
        PY,
        "-m",
        "alerts.admin",
        "user",
        "add",
        DEMO_USER,
        "--name",
        "Demo Coordinator",
        "--role",
        "coordinator",
        "--team",
        DEMO_TEAM,
    ]
    _run("the demo login", add, {**env, "VAKTROM_NEW_PASSWORD": password})
    fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password)
    return password


def stages(env: dict[str, str]) -> list[Stage]:
    """The four stages, each signed in to Kafka as its own principal (docs/kafka-security.md), and
    the FHIR gateway (it logs in to the broker as each kit that posts); the bridge logs in to the
    broker with the client id its account is bound to (docs/broker-accounts.md)."""
    port = {  # each stage's /health, where its settings put it (defaults as there)
        name: int(env.get(f"VAKTROM_{name.upper()}_METRICS_PORT", default))
        for name, default in (("bridge", 9464), ("monitor", 9466), ("archive", 9465), ("alerts", 9467))
    }
    return [
        Stage("bridge", "ingest", port["bridge"],
              {"VAKTROM_BRIDGE_CLIENT_ID": BRIDGE.client_id, **kafka_principal(env, "bridge")}),
        Stage("monitor", "streams.monitor", port["monitor"],
              {"VAKTROM_MONITOR_DATA_DIR": str(STATE / "monitor"), **kafka_principal(env, "monitor")}),
        Stage("archive", "streams.archive", port["archive"], kafka_principal(env, "archive")),
        # the response centre hosts the registry: care plans go out as the registry's principal;
        # its console watches the other stages where they really listen (their ports may be moved)
        Stage("alerts", "alerts", port["alerts"], {**kafka_principal(env, "alerts"), **hosted_registry(env),
              "VAKTROM_ALERTS_WATCH_STAGES": watch_stages(env, port)}),
        # FHIR input over HTTP (docs/fhir-input.md): no account of its own, it logs in as each kit
        # (its /health on the metrics port: plain HTTP even when the kits' port speaks HTTPS)
        Stage("fhir-gateway", "ingest.http_gateway", int(env.get("VAKTROM_FHIR_METRICS_PORT", "9468")), {}),
    ]  # fmt: skip


def watch_stages(env: dict[str, str], port: dict[str, int]) -> str:
    """VAKTROM_ALERTS_WATCH_STAGES for the console: as given, else the three other stages' /health
    on the ports they were started with (the settings' default names the default ports only, so a
    moved port showed nurses a false "alerts may be delayed" banner)."""
    given = env.get("VAKTROM_ALERTS_WATCH_STAGES")
    if given is not None:
        return given
    return ",".join(
        f"{name}=http://127.0.0.1:{port[name]}/health" for name in ("bridge", "monitor", "archive")
    )


def start_simulator(env: dict[str, str], patients: str, seed: int, credentials: Path) -> Stage:
    """The demo's kits: history as fast as the pipeline confirms, then real time."""
    sim = Stage("simulator", "gateway_sim", 0, {})
    print(
        f"==> simulator: {HISTORY_DAYS} days of history as fast as the pipeline confirms, then real time "
        f"(every kit measures every {LIVE_EVERY}; the injected episodes peak now)",
        flush=True,
    )
    LOGS.mkdir(parents=True, exist_ok=True)
    sim.process = subprocess.Popen(
        [PY, "-m", "gateway_sim", "run", "--patients", patients, "--seed", str(seed),
         "--kit-prefix", KIT_PREFIX, "--days", str(HISTORY_DAYS), "--follow", "--follow-days", "1",
         "--episodes-now", "--live-every", LIVE_EVERY, "--connection-per-kit",
         "--credentials", str(credentials), "--confirm", "receipt",
         "--out", str(DEMO / "run")],
        env=env, stdout=(LOGS / "simulator.log").open("ab"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    return sim


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--patients", default="heart_failure=8,copd=8,diabetes=8,infection=6")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    env = _env()
    running: list[Stage] = []
    supervisor = Supervisor(env=env, status_file=STATE / "run" / "pipeline.json")
    stop_requested = False

    def on_signal(_sig: int, _frame: Any) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    began = time.monotonic()
    try:
        print("==> demo cohort: patients, kits with their own broker identities, care plans", flush=True)
        mark = time.monotonic()
        credentials = enrol(env, args.patients, args.seed)
        password = demo_login(env)
        _timed("enrolled", mark)
        for stage in stages(env):
            print(f"==> {stage.name}: starting", flush=True)
            mark = time.monotonic()
            stage.start(env)
            running.append(stage)
            stage.wait(120)
            supervisor.add(stage)
            _timed(f"{stage.name} healthy", mark)
        sim = start_simulator(env, args.patients, args.seed, credentials)
        running.append(sim)
        host, port = (
            env.get("VAKTROM_ALERTS_HTTP_HOST", "127.0.0.1"),
            env.get("VAKTROM_ALERTS_HTTP_PORT", "8470"),
        )
        url = f"http://{host}:{port}"
        print(f"==> pipeline up in {time.monotonic() - began:.1f} s", flush=True)
        print(f"    console: {url}   login: {DEMO_USER} / {password}", flush=True)
        print(
            "    logs: .local/logs/<stage>.log · Ctrl-C stops every stage (the stack keeps running)",
            flush=True,
        )
        sim_done = False
        while not stop_requested:
            supervisor.tick()  # a stage that exits is started again; the others keep running
            if sim.process is not None and sim.process.poll() is not None and not sim_done:
                sim_done = True
                code = sim.process.returncode
                print(f"    simulator finished ({code}); the pipeline keeps running", flush=True)
            time.sleep(0.5)
    finally:
        print("==> stopping: " + ", ".join(s.name for s in reversed(running)), flush=True)
        supervisor.stopping(s.name for s in running)
        for stage in reversed(running):
            stage.stop()
        print("==> stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
