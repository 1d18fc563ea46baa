"""`vaktrom-contracts write|check`: regenerate or verify the committed JSON Schema files."""

from __future__ import annotations

import argparse
import sys

from contracts._schema import SCHEMA_DIR, stale_schemas, write_schemas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vaktrom-contracts", description=__doc__)
    parser.add_argument("command", choices=["write", "check"], help="write the schema files, or check them")
    args = parser.parse_args(argv)
    if args.command == "write":
        for path in write_schemas():
            print(f"wrote {path}")
        return 0
    stale = stale_schemas()
    if stale:
        print(
            f"JSON Schemas in {SCHEMA_DIR} are out of date: {', '.join(stale)}.\n"
            "Run `make schemas` (python -m contracts write) and commit the result.",
            file=sys.stderr,
        )
        return 1
    print("JSON Schemas are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
