"""Put kits into the kit registry from an enrolment file, so the bridge attributes their readings.

    python infra/enrol.py ENROLMENT.json [--database-url URL] [--since 2026-01-01T00:00:00+00:00]

ENROLMENT.json is what `gateway-sim run` or `gateway-sim load` writes: a list of
{patient_id, kit, devices: [{serial, kind, model}], ...}. Each kit is registered as assigned to its
patient from `--since` (default: 60 days ago, so a simulated history is covered) with its devices.
Idempotent: running it again changes nothing; a kit already assigned to another patient is an error.

This is the local-stack shortcut; enrolment with people, pairing codes and broker credentials is
the registry's own job (issue #8). The tables are the registry's: this script writes them through
`registry.bulk.register_kits`, never with its own SQL.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from contracts.mqtt_accounts import kit_id_problem
from registry import RegistryError
from registry.bulk import register_kits

__all__ = ["enrol"]


def enrol(url: str, rows: list[dict[str, Any]], *, since: datetime) -> int:
    """Register every kit, device and assignment in `rows`; returns how many kits were new."""
    problems = [p for p in (kit_id_problem(str(row["kit"])) for row in rows) if p is not None]
    if problems:  # a kit id is its broker login too: never a service account's name
        raise SystemExit(
            f"enrol: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        )
    with psycopg.connect(url) as conn:
        try:
            return register_kits(conn, rows, since=since)
        except RegistryError as exc:
            raise SystemExit(f"enrol: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("enrolment", type=Path, help="enrolment.json from gateway-sim")
    parser.add_argument("--database-url", default=os.environ.get("VAKTROM_DATABASE_URL"))
    parser.add_argument("--since", help="assignment start, RFC 3339 (default: 60 days ago)")
    args = parser.parse_args(argv)
    if not args.database_url:
        print("enrol: set VAKTROM_DATABASE_URL or pass --database-url", file=sys.stderr)
        return 2
    since = datetime.fromisoformat(args.since) if args.since else datetime.now(UTC) - timedelta(days=60)
    if since.tzinfo is None:
        print("enrol: --since needs an offset, e.g. 2026-11-01T00:00:00+01:00", file=sys.stderr)
        return 2
    try:
        rows = json.loads(args.enrolment.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"enrol: cannot read {args.enrolment}: {exc}", file=sys.stderr)
        return 2
    try:
        created = enrol(args.database_url, rows, since=since)
    except psycopg.Error as exc:
        print(f"enrol: the database refused the enrolment: {exc}".strip(), file=sys.stderr)
        return 1
    print(f"enrol: {len(rows)} kits in the registry ({created} new)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
