"""faust's own floor on this machine, for bench/monitor_throughput.py: how many records a second a
faust agent takes from the worker phase's topic when it does nothing with them, or one table write
each, and how busy it keeps its process meanwhile. A worker cannot be faster than its floor.

    python bench/faust_floors.py PREFIX noop|write COUNT    (the child; the benchmark runs it)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import faust
from faust.auth import SASLCredentials

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]

from archive_throughput import as_stage  # noqa: E402  (bench/ holds scripts)

from contracts import topics  # noqa: E402
from contracts.settings import KafkaSettings  # noqa: E402
from streams.monitor.settings import MonitorSettings  # noqa: E402


def floor_child(prefix: str, mode: str, count: int) -> None:
    """A faust app doing (almost) nothing per record: its rate is faust's own ceiling here. It
    produces with the worker's linger, so that the table-write floor compares with the worker.
    Signed in as the admin (VAKTROM_KAFKA_* from the parent): a floor has no stage's rules."""
    admin = KafkaSettings.from_env()
    app = faust.App(
        f"{prefix}floor-{mode}", broker=f"kafka://{admin.bootstrap}", store="memory://",
        broker_credentials=SASLCredentials(**admin.sasl_credentials() or {}),
        web_enabled=False, topic_partitions=6, consumer_auto_offset_reset="earliest", producer_acks=-1,
        broker_commit_every=1000, producer_linger=MonitorSettings.from_env().linger_ms / 1000.0,
    )  # fmt: skip
    source = app.topic(topics.measurement_topic(prefix), key_serializer="raw", value_serializer="raw")
    table = app.Table("floor", partitions=6, key_type=bytes, value_type=bytes)
    seen = [0, 0.0, 0.0]

    @app.agent(source)
    async def agent(stream: Any) -> None:
        async for event in stream.events():
            if not seen[0]:
                seen[1:] = [time.perf_counter(), time.process_time()]
            if mode == "write":
                table[event.key] = event.value
            seen[0] += 1
            if seen[0] == count:
                wall, cpu = time.perf_counter() - seen[1], time.process_time() - seen[2]
                # the rate, and the cores this process kept busy meanwhile (all its threads)
                print(f"{count / wall:.0f} {cpu / wall:.2f}", flush=True)
                os._exit(0)

    class Quiet(faust.Worker):  # type: ignore[misc]
        def _setup_logging(self) -> None:
            pass

    Quiet(app, loglevel="WARNING", quiet=True, redirect_stdouts=False).execute_from_commandline()


def floor_phase(env: dict[str, str], prefix: str, mode: str, count: int) -> dict[str, Any]:
    """faust's own rate on the worker phase's topic: an agent that does nothing, or one table write."""
    out = subprocess.run(
        [sys.executable, __file__, prefix, mode, str(count)],
        env={**os.environ, **env, **as_stage(env, "admin")},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    found = re.findall(r"(\d+) (\d+\.\d+)\s*$", out.stdout)  # faust's terminal codes may precede it
    try:
        rate, cores = int(found[-1][0]), float(found[-1][1])
    except IndexError:
        sys.exit(f"bench: the faust floor run ({mode}) failed:\n{out.stderr[-3000:]}")
    label, cpu_us = {"noop": "no work", "write": "1 table write"}[mode], cores / rate * 1e6
    print(
        f"  faust floor, {label:13} {count:,} records at {rate:9,}/s; "
        f"{cores:.2f} cores busy, {cpu_us:.0f} us CPU per record",
        flush=True,
    )
    return {
        "agent": label,
        "records": count,
        "per_s": rate,
        "process_busy_cores": cores,
        "cpu_us_per_record": round(cpu_us, 1),
    }


if __name__ == "__main__":
    floor_child(sys.argv[1], sys.argv[2], int(sys.argv[3]))
