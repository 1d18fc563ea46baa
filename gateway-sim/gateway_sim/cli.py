"""`gateway-sim`: simulate home-monitoring kits over MQTT, for demos and for load tests.

Commands:
  run             a cohort of patients: weeks of history in minutes, then (with --follow) real time
  load            a fixed aggregate rate from N synthetic kits, for throughput tests
  example-cohort  print a commented cohort file to start from

Exit codes: 0 every reading confirmed; 1 some readings still unconfirmed when the run ended (see the
ledger); 2 bad arguments or cohort file; 3 the broker could not be reached or refused the kits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from gateway_sim import messages as wire
from gateway_sim._errors import BrokerError, CohortError, SimulatorError
from gateway_sim.cohort import EXAMPLE_COHORT, Cohort, load_cohort, parse_counts
from gateway_sim.faults import Faults
from gateway_sim.kits import CohortStream, build_patients, load_enrolment
from gateway_sim.ledger import Ledger
from gateway_sim.runner import CohortSource, LoadSource, Progress, Runner, RunOptions, Source
from gateway_sim.transport import BrokerAddress, MqttPool

__all__ = ["main", "status_time"]

log = logging.getLogger("gateway_sim")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"gateway-sim: {name}={value!r} is not a port number") from None


def _duration(text: str) -> float:
    """`90`, `90s`, `15m`, `2h`, `14d` to seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = text.strip()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 15m, 2h or 14d") from None


def _positive(kind: type[int] | type[float], *, high: float | None = None) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be greater than 0")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{text!r} must be at most {high:g}")
        return value

    return parse


def _mqtt_options(parser: argparse.ArgumentParser) -> None:
    """The options `run` and `load` share: where the broker is, and how readings are settled."""
    _broker_options(parser)
    _delivery_options(parser)


def _broker_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("broker")
    g.add_argument(
        "--host",
        default=os.environ.get("VAKTROM_MQTT_HOST", "127.0.0.1"),
        help="MQTT broker host (env VAKTROM_MQTT_HOST; default %(default)s)",
    )
    g.add_argument(
        "--port",
        type=int,
        default=_env_int("VAKTROM_MQTT_PORT", 1883),
        help="MQTT broker port (env VAKTROM_MQTT_PORT; default %(default)s)",
    )
    g.add_argument(
        "--username",
        default=os.environ.get("VAKTROM_SIM_MQTT_USERNAME"),
        help="user for pooled connections (env VAKTROM_SIM_MQTT_USERNAME)",
    )
    g.add_argument(
        "--password",
        default=os.environ.get("VAKTROM_SIM_MQTT_PASSWORD"),
        help="its password (env VAKTROM_SIM_MQTT_PASSWORD; never printed)",
    )
    g.add_argument("--cafile", help="CA certificate to verify the broker's TLS certificate (switches TLS on)")
    g.add_argument("--certfile", help="client certificate, for a broker that requires one (needs --cafile)")
    g.add_argument("--keyfile", help="the client certificate's private key")
    g.add_argument(
        "--connections",
        type=_positive(int),
        default=4,
        help="pooled MQTT connections shared by all kits (default %(default)s)",
    )
    g.add_argument(
        "--connection-per-kit",
        action="store_true",
        help="one connection per kit with its own credentials and last will; its client id is its kit "
        "id, the only one the broker accepts with the kit's credentials",
    )
    g.add_argument(
        "--credentials", type=Path, help="JSON file {kit: {username, password}} for --connection-per-kit"
    )
    g.add_argument(
        "--max-inflight",
        type=_positive(int, high=20000),  # the pool's bound; MQTT has 65,535 message ids
        default=1000,
        help="unacknowledged publishes per connection (default %(default)s; MQTT allows < 65,535)",
    )
    g.add_argument("--client-prefix", help="MQTT client id prefix (default: sim-<kit prefix>)")
    g.add_argument(
        "--connect-timeout",
        type=_duration,
        default=10.0,
        help="give up when the broker cannot be reached within this long (default 10s)",
    )
    g.add_argument("--topic-root", default="vaktrom/v1", help="MQTT topic root (default %(default)s)")


def _delivery_options(parser: argparse.ArgumentParser) -> None:
    d = parser.add_argument_group("delivery and output")
    d.add_argument(
        "--confirm",
        choices=("receipt", "puback"),
        default="puback",
        help="what settles a reading: the bridge's delivery receipt, or the broker's PUBACK "
        "(default %(default)s; use receipt with the ingest bridge running)",
    )
    d.add_argument(
        "--resend-after",
        type=_duration,
        default=30.0,
        help="resend a reading whose receipt has not come after this long (default 30s)",
    )
    d.add_argument(
        "--limited-retry",
        type=_duration,
        default=2.0,
        help="after a rate_limited receipt, resend after this long, doubling with each further one up "
        "to 60s (default 2s)",
    )
    d.add_argument(
        "--drain",
        type=_duration,
        default=30.0,
        help="at the end, wait this long for outstanding confirmations (default 30s)",
    )
    d.add_argument(
        "--max-backlog",
        type=_positive(int),
        default=20000,
        help="messages released but not yet confirmed, across all kits (default %(default)s)",
    )
    d.add_argument(
        "--kit-queue",
        type=_positive(int),
        default=5000,
        help="messages one kit holds unconfirmed before it drops its oldest unsent one "
        "(default %(default)s; dropped readings are listed in the ledger)",
    )
    d.add_argument(
        "--out",
        type=Path,
        default=Path("sim-out"),
        help="folder for ledger.json, ledger.readings.jsonl, ground-truth.jsonl, enrolment.json",
    )
    d.add_argument(
        "--ledger-detail",
        choices=("full", "summary"),
        default="full",
        help="full also writes one line per reading (default %(default)s)",
    )
    d.add_argument("--quiet", action="store_true", help="no progress lines")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway-sim",
        description="Simulate Vaktrom home-monitoring kits over MQTT. The kits speak only the published "
        "payload format (contracts/schemas/*.json).",
        epilog="Examples:\n"
        "  gateway-sim run --patients heart_failure=10,copd=10 --days 14 --port 11883\n"
        "  gateway-sim run --cohort cohort.toml --days 14 --follow\n"
        "  gateway-sim load --kits 1000 --rate 5000 --duration 60s --port 11883\n"
        "Exit codes: 0 all confirmed, 1 some unconfirmed (see the ledger), 2 bad input, 3 broker trouble.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _run_options(
        sub.add_parser(
            "run",
            help="simulate a cohort of patients (accelerated history, then real time)",
            description="Simulate a cohort. Simulated time runs from --days ago to now as fast as "
            "the pipeline confirms (or --speed times real time), then, with --follow, in real "
            "time until Ctrl-C. Measured times are simulated times.",
        )
    )
    _load_options(
        sub.add_parser(
            "load",
            help="drive a fixed aggregate rate from many synthetic kits",
            description="Publish --rate reading messages per second in total from --kits kits for "
            "--duration, then wait for confirmations and write the ledger.",
        )
    )
    sub.add_parser("example-cohort", help="print a commented cohort file")
    return parser


def _run_options(run: argparse.ArgumentParser) -> None:
    who = run.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--cohort", type=Path, help="cohort file (TOML); `gateway-sim example-cohort` prints one"
    )
    who.add_argument(
        "--patients", help="counts per condition, e.g. heart_failure=25,copd=25,diabetes=25,infection=25"
    )
    run.add_argument("--seed", type=int, help="random seed (overrides the cohort file's; default 1)")
    run.add_argument("--kit-prefix", help="kit serial prefix (overrides the cohort file's; default SIM)")
    run.add_argument(
        "--days", type=_positive(float), default=14.0, help="days of history to simulate (default 14)"
    )
    run.add_argument("--start", help="start of simulated time (RFC 3339), instead of --days before now")
    run.add_argument(
        "--follow", action="store_true", help="after the history, go on in real time until Ctrl-C"
    )
    run.add_argument(
        "--follow-days",
        type=_positive(float),
        default=1.0,
        help="with --follow: how far ahead episodes may be placed (default 1 day)",
    )
    run.add_argument(
        "--episodes-now",
        action="store_true",
        help="demo: every injected episode peaks when real time begins (or as soon after as the "
        "history it needs allows), instead of at a random time in the run",
    )
    run.add_argument(
        "--live-every",
        type=_duration,
        help="demo, with --follow: in real time every kit measures at this interval (e.g. 2m) instead "
        "of in its daily windows",
    )
    run.add_argument(
        "--speed",
        type=_positive(float),
        help="simulated seconds per real second for the history (default: as fast as confirmed)",
    )
    run.add_argument(
        "--faults",
        help="kit misbehaviour rates, e.g. duplicate=0.01,malformed=0.001 "
        "(replaces the cohort file's [faults])",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="write ground truth and enrolment and count messages, without a broker",
    )
    _mqtt_options(run)


def _load_options(load: argparse.ArgumentParser) -> None:
    load.add_argument("--kits", type=_positive(int), required=True, help="number of kits")
    load.add_argument(
        "--rate", type=_positive(float), required=True, help="messages per second, all kits together"
    )
    load.add_argument("--duration", type=_duration, required=True, help="how long, e.g. 60s or 5m")
    load.add_argument(
        "--readings-per-message",
        type=int,
        choices=(1, 2),
        default=2,
        help="1 = SpO2 only, 2 = SpO2 and pulse (default 2)",
    )
    load.add_argument(
        "--abnormal-share",
        type=float,
        default=0.0,
        help="share of messages with an SpO2 of 85-90 %% (a red NEWS2 alert), to measure the alert path "
        "(default 0)",
    )
    load.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    load.add_argument("--kit-prefix", default="LOAD", help="kit serial prefix (default LOAD)")
    _mqtt_options(load)


def _cohort(args: argparse.Namespace) -> Cohort:
    if args.cohort is not None:
        cohort = load_cohort(args.cohort)
    else:
        cohort = Cohort(patients=parse_counts(args.patients))
    changes: dict[str, Any] = {}
    if args.seed is not None:
        changes["seed"] = args.seed
    if args.kit_prefix is not None:
        changes["kit_prefix"] = args.kit_prefix
    if args.faults is not None:
        changes["faults"] = Faults.parse(args.faults)
    if changes:
        cohort = replace(cohort, **changes)
    return cohort


class _Stop:
    """First SIGINT/SIGTERM: stop releasing and drain. Second: leave at once."""

    def __init__(self) -> None:
        self.asked = False

    def __call__(self, signum: int, _frame: FrameType | None) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        print(
            f"\ngateway-sim: {signal.Signals(signum).name}: stopping, waiting for confirmations "
            "(again to quit at once)",
            file=sys.stderr,
        )

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)


def _credentials(path: Path | None) -> dict[str, tuple[str, str]] | None:
    if path is None:
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {kit: (str(v["username"]), str(v["password"])) for kit, v in doc.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CohortError(
            f"cannot read credentials from {path} ({exc}); expected JSON like "
            '{"KIT-1": {"username": "KIT-1", "password": "..."}}'
        ) from None


def status_time(sim_end: datetime | None) -> datetime:
    """When a kit's own status message (online, offline) is stamped: now, or the end of simulated time
    when that is earlier. A kit's clock is simulated time, so a run of a past period (--start) says
    goodbye at its end; today's date would put the monitor's stream clock months on from the
    readings (every kit "silent", every all-clear period ended)."""
    now = datetime.now(UTC)
    return now if sim_end is None else min(now, sim_end)


def _execute(
    args: argparse.Namespace,
    kits: list[str],
    source: Source,
    run_info: dict[str, Any],
    *,
    sim_end: datetime | None = None,
) -> int:
    """Publish what `source` releases. `sim_end`: the end of simulated time, when the run has one."""
    prefix = args.client_prefix or f"sim-{kits[0].rsplit('-', 1)[0]}"
    root = args.topic_root
    if (args.certfile is None) != (args.keyfile is None) or (args.certfile and not args.cafile):
        raise CohortError(
            "--certfile and --keyfile go together, and need --cafile (client certificates are TLS)"
        )
    for option in ("cafile", "certfile", "keyfile"):
        path = getattr(args, option)
        if path is not None and not Path(path).is_file():
            raise CohortError(f"--{option} {path} does not exist")
    broker = BrokerAddress(
        args.host, args.port, args.username, args.password, args.cafile,
        certfile=args.certfile, keyfile=args.keyfile,
    )  # fmt: skip
    if args.connection_per_kit and args.credentials is None and args.username is None:
        log.info("--connection-per-kit without --credentials: kits connect anonymously")

    def status(kit: str, state: str) -> tuple[str, bytes]:
        return f"{root}/kits/{kit}/status", wire.status_payload(kit, state, status_time(sim_end))

    pool = MqttPool(
        broker=broker,
        kits=kits,
        connections=None if args.connection_per_kit else args.connections,
        client_prefix=prefix,
        receipt_topics=(lambda kit: f"{root}/kits/{kit}/receipts") if args.confirm == "receipt" else None,
        credentials=_credentials(args.credentials),
        will=lambda kit: status(kit, "offline"),
        max_inflight=args.max_inflight,
        command_topics=lambda kit: f"{root}/kits/{kit}/commands",  # the kits show and acknowledge them
    )
    ledger = Ledger(confirm=args.confirm)
    options = RunOptions(
        confirm=args.confirm,
        resend_after=args.resend_after,
        limited_retry=args.limited_retry,
        max_backlog=args.max_backlog,
        kit_queue=args.kit_queue,
        drain=args.drain,
        root=root,
    )
    progress = None if args.quiet else Progress()
    stop = _Stop()
    stop.install()
    print(
        f"gateway-sim: {len(kits):,} kits over {len(pool.connections):,} connection(s) to {broker}, "
        f"confirm by {args.confirm}",
        file=sys.stderr,
    )
    pool.connect(timeout=args.connect_timeout)
    runner = Runner(pool=pool, source=source, ledger=ledger, options=options, progress=progress)
    started = datetime.now(UTC)
    t0 = time.monotonic()
    try:
        complete = runner.run(should_stop=lambda: stop.asked)
    except KeyboardInterrupt:
        complete = False
    elapsed = time.monotonic() - t0
    pool.close(goodbye=None if args.connection_per_kit else (lambda kit: status(kit, "offline")))
    run_info |= {
        "started": wire.iso(started),
        "elapsed_s": round(elapsed, 3),
        "broker": str(broker),
        "connections": len(pool.connections),
        "reconnects": pool.reconnects,
        "publish_rate_per_s": round(ledger.messages["published"] / elapsed, 1) if elapsed > 0 else None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    summary = ledger.write(args.out / "ledger.json", run_info, detail=args.ledger_detail == "full")
    _report(summary, args.out)
    return 0 if complete else 1


def _report(summary: dict[str, Any], out: Path) -> None:
    r, m, lat = summary["readings"], summary["messages"], summary["latency_ms"]["publish_to_puback"]
    print(
        f"gateway-sim: published {m.get('published', 0):,} messages in {summary['run']['elapsed_s']} s "
        f"({summary['run']['publish_rate_per_s']}/s); readings: {r.get('confirmed', 0):,} confirmed, "
        f"{r.get('unconfirmed', 0):,} unconfirmed, {r.get('dropped', 0):,} dropped, "
        f"{r.get('broken', 0):,} in deliberately broken payloads",
        file=sys.stderr,
    )
    if lat:
        print(
            f"gateway-sim: publish->PUBACK ms p50 {lat['p50']} p99 {lat['p99']} max {lat['max']}",
            file=sys.stderr,
        )
    print(f"gateway-sim: ledger in {out / 'ledger.json'}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    cohort = _cohort(args)
    now = datetime.now(UTC).replace(microsecond=0)
    if args.start is not None:
        try:
            start = datetime.fromisoformat(args.start)
        except ValueError:
            raise CohortError(
                f"--start {args.start!r} is not an RFC 3339 time like 2026-11-01T00:00:00+01:00"
            ) from None
        if start.tzinfo is None:
            raise CohortError("--start needs an offset, e.g. 2026-11-01T00:00:00+01:00")
        end = start + timedelta(days=args.days)
    else:
        start, end = now - timedelta(days=args.days), now
    if args.follow:
        end = max(end, now) + timedelta(days=args.follow_days)
    elif args.live_every is not None:
        raise CohortError("--live-every applies to the real-time part: add --follow")
    if args.live_every is not None and args.live_every < 10:
        raise CohortError(f"--live-every {args.live_every:g} s is too often for a kit; give 10s or more")
    run_days = (end - start) / timedelta(days=1)
    live = None if args.live_every is None else (now, timedelta(seconds=args.live_every))
    patients = build_patients(
        cohort, run_start=start, run_days=run_days, episodes_at=now if args.episodes_now else None, live=live
    )
    stream = CohortStream(cohort, patients, start=start, end=end)  # a future part runs in real time
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "enrolment.json").write_text(
        json.dumps([p.enrolment(cohort.timezone) for p in patients], indent=1) + "\n", encoding="utf-8"
    )
    run_info: dict[str, Any] = {
        "command": "run",
        "seed": cohort.seed,
        "patients": dict(cohort.patients),
        "sim_start": wire.iso(start),
        "sim_end": wire.iso(stream.end),
        "faults": {k: getattr(cohort.faults, k) for k in cohort.faults.__dataclass_fields__},
    }
    if args.dry_run:
        messages = readings = 0
        for _at, message in stream:
            messages += 1
            readings += len(message.readings)
        _write_truth(args.out, patients)
        print(
            f"gateway-sim: dry run: {len(patients)} patients, {messages:,} messages, {readings:,} readings "
            f"from {wire.iso(start)} to {wire.iso(stream.end)}; files in {args.out}",
            file=sys.stderr,
        )
        return 0
    try:
        return _execute(
            args,
            [p.kit for p in patients],
            CohortSource(iter(stream), speed=args.speed),
            run_info,
            sim_end=stream.end,
        )
    finally:
        _write_truth(args.out, patients)  # skipped measurements are known only once their day was drawn


def _write_truth(out: Path, patients: list[Any]) -> None:
    rows = sorted((row for p in patients for row in p.truth), key=lambda r: (r["start"], r["patient_id"]))
    with (out / "ground-truth.jsonl").open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")


def cmd_load(args: argparse.Namespace) -> int:
    if not 0.0 <= args.abnormal_share <= 1.0:
        raise CohortError(f"--abnormal-share {args.abnormal_share:g} must lie between 0 and 1")
    kits = [f"{args.kit_prefix}-{i:06d}" for i in range(1, args.kits + 1)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "enrolment.json").write_text(
        json.dumps(load_enrolment(args.kit_prefix, args.kits), indent=1) + "\n", encoding="utf-8"
    )
    source = LoadSource(
        kits=kits,
        rate=args.rate,
        duration=args.duration,
        seed=args.seed,
        readings=args.readings_per_message,
        abnormal_share=args.abnormal_share,
    )
    run_info = {
        "command": "load",
        "kits": args.kits,
        "target_rate": args.rate,
        "duration_s": args.duration,
        "readings_per_message": args.readings_per_message,
        "seed": args.seed,
        "abnormal_share": args.abnormal_share,
    }
    return _execute(args, kits, source, run_info)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="gateway-sim: %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "example-cohort":
            sys.stdout.write(EXAMPLE_COHORT)
            return 0
        if args.command == "run":
            return cmd_run(args)
        return cmd_load(args)
    except BrokerError as exc:
        print(f"gateway-sim: {exc}", file=sys.stderr)
        return 3
    except SimulatorError as exc:
        print(f"gateway-sim: {exc}", file=sys.stderr)
        return 2
