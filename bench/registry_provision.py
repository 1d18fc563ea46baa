"""Kit provisioning: 10,000 kits with their own broker identities, and what the broker then enforces.

    .local/venv/bin/python bench/registry_provision.py [--kits 10000] [--runtime 300]

Phases, on the running local stack:
  runtime   kits provisioned one at a time over $CONTROL while the broker runs (how kit_add and
            pairing work), timed per kit as the plugin's configuration grows;
  cohort    `python -m registry kit cohort` for KITS kits: patients, kits, devices, assignments
            and care plans in PostgreSQL, credentials written into the stopped broker's plugin
            file, care plans published to Kafka; then the broker started again;
  verify    a sample of kits log in with their credentials; a kit publishing to another kit's
            topic is refused.
The broker's plugin file is restored afterwards (so later runs and tests do not inherit 10,000
kits). Results: bench/results/registry_provision.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "bench"), str(REPO / "gateway-sim"), str(REPO)]

from archive_throughput import as_stage, scratch_topics, stack_env, write_results  # noqa: E402  (bench/ holds scripts)
from gateway_sim.kits import load_enrolment  # noqa: E402

from registry.broker import BrokerAdmin  # noqa: E402
from tests.integration.registry_support import KitClient  # noqa: E402

DYNSEC = REPO / ".local" / "mosquitto" / "data" / "dynamic-security.json"


def _stack(*args: str) -> float:
    began = time.monotonic()
    result = subprocess.run(
        [str(REPO / "infra" / "stack"), *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        sys.exit(f"bench: infra/stack {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return time.monotonic() - began


def runtime_phase(env: dict[str, str], count: int, tag: str) -> dict[str, Any]:
    admin = BrokerAdmin(
        host=env["VAKTROM_MQTT_HOST"], port=int(env["VAKTROM_MQTT_PORT"]),
        username=env["VAKTROM_MQTT_ADMIN_USERNAME"], password=env["VAKTROM_MQTT_ADMIN_PASSWORD"], timeout=120,
    )  # fmt: skip
    times: list[float] = []
    kits = [f"BRT{tag}-{i:05d}" for i in range(count)]
    with admin:
        for i, kit in enumerate(kits):
            began = time.monotonic()
            admin.provision([(kit, "pw-" + kit)])
            times.append(time.monotonic() - began)
            if (i + 1) % 50 == 0:
                print(f"  runtime: {i + 1}/{count} kits, last {1000 * times[-1]:.0f} ms each", flush=True)
        admin.revoke(kits)
    first, last = times[: count // 10], times[-count // 10 :]
    return {
        "kits": count,
        "seconds": round(sum(times), 2),
        "ms_per_kit_first_tenth": round(1000 * sum(first) / len(first), 1),
        "ms_per_kit_last_tenth": round(1000 * sum(last) / len(last), 1),
    }


def cohort_phase(env: dict[str, str], kits: int, tag: str, tmp: Path) -> dict[str, Any]:
    rows = load_enrolment(f"BPV{tag}", kits)
    prefix = f"benchpv{tag.lower()}."  # its care plans go to topics of its own, not the demo's
    scratch_topics(env, prefix, partitions=6)
    enrolment, credentials = tmp / "enrolment.json", tmp / "credentials.json"
    enrolment.write_text(json.dumps(rows))
    began = time.monotonic()
    stop_s = _stack("down", "mosquitto")
    run_env = {
        **env, **as_stage(env, "registry"), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
        "VAKTROM_TOPIC_PREFIX": prefix,
    }  # fmt: skip
    cmd = [
        sys.executable, "-m", "registry", "kit", "cohort", str(enrolment),
        "--credentials-out", str(credentials), "--team", f"bench-{tag.lower()}",
        "--broker-config", str(DYNSEC),
    ]  # fmt: skip
    cohort_began = time.monotonic()
    result = subprocess.run(cmd, capture_output=True, text=True, env=run_env, check=False, timeout=900)
    cohort_s = time.monotonic() - cohort_began
    start_s = _stack("up", "mosquitto")
    total = time.monotonic() - began
    if result.returncode != 0:
        sys.exit(f"bench: the cohort failed:\n{result.stderr}")
    print(f"  cohort: {result.stdout.strip()}", flush=True)
    return {
        "kits": kits,
        "total_seconds": round(total, 1),
        "broker_stop_seconds": round(stop_s, 1),
        "registry_cohort_seconds": round(cohort_s, 1),
        "broker_start_seconds": round(start_s, 1),
        "registry_output": result.stdout.strip(),
        "credentials": str(credentials),
        "dynsec_bytes": DYNSEC.stat().st_size,
    }


def verify_phase(env: dict[str, str], credentials: Path, root: str, sample: int) -> dict[str, Any]:
    issued: dict[str, dict[str, str]] = json.loads(credentials.read_text())
    host, port = env["VAKTROM_MQTT_HOST"], int(env["VAKTROM_MQTT_PORT"])
    kits = random.Random(7).sample(sorted(issued), min(sample, len(issued)))  # noqa: S311 - a repeatable sample
    logged_in = refused = 0
    for i, kit in enumerate(kits):
        client = KitClient(host, port, issued[kit]["username"], issued[kit]["password"])
        try:
            if client.connect() != "Success":
                continue
            logged_in += 1
            other = kits[(i + 1) % len(kits)]
            if i % 10 == 0 and client.publish(f"{root}/kits/{other}/readings", b"{}") == "Not authorized":
                refused += 1
        finally:
            client.close()
    return {
        "sampled": len(kits),
        "logged_in": logged_in,
        "forged_publishes": len(kits[::10]),
        "refused": refused,
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kits", type=int, default=10_000)
    parser.add_argument("--runtime", type=int, default=300, help="kits provisioned one by one at run time")
    parser.add_argument("--sample", type=int, default=200)
    args = parser.parse_args()
    env = stack_env()
    tag = time.strftime("%H%M%S")
    backup = DYNSEC.with_name("dynamic-security.json.bench-backup")
    results: dict[str, Any] = {}
    print(f"bench: provisioning {args.runtime} kits at run time, then a cohort of {args.kits}", flush=True)
    results["runtime"] = runtime_phase(env, args.runtime, tag)
    print(f"  runtime: {results['runtime']}", flush=True)
    _stack("down", "mosquitto")
    shutil.copy2(DYNSEC, backup)
    _stack("up", "mosquitto")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results["cohort"] = cohort_phase(env, args.kits, tag, Path(tmp))
            results["verify"] = verify_phase(
                env, Path(results["cohort"]["credentials"]), "vaktrom/v1", args.sample
            )
    finally:
        _stack("down", "mosquitto")
        shutil.copy2(backup, DYNSEC)
        backup.unlink()
        _stack("up", "mosquitto")
    print(f"  verify: {results['verify']}", flush=True)
    cohort = results["cohort"]
    print(
        f"bench: {args.kits} kits provisioned in {cohort['total_seconds']} s (broker stop "
        f"{cohort['broker_stop_seconds']} s, registry {cohort['registry_cohort_seconds']} s, broker start "
        f"{cohort['broker_start_seconds']} s); at run time {results['runtime']['ms_per_kit_last_tenth']} ms "
        f"per kit after {args.runtime}"
    )
    write_results("registry_provision.json", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
