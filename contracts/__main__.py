"""`vaktrom-contracts check`: verify the committed JSON Schema files against the contract types.

Regenerating them writes files, which the contracts do not do: `make schemas` (infra/schemas.py).
"""

from __future__ import annotations

import argparse
import sys

from contracts._schema import SCHEMA_DIR, stale_schemas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vaktrom-contracts", description=__doc__)
    parser.add_argument("command", choices=["check"], help="check the schema files")
    parser.parse_args(argv)
    stale = stale_schemas()
    if stale:
        print(
            f"JSON Schemas in {SCHEMA_DIR} are out of date: {', '.join(stale)}.\n"
            "Run `make schemas` (python infra/schemas.py) and commit the result.",
            file=sys.stderr,
        )
        return 1
    print("JSON Schemas are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
