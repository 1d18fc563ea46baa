"""Write the committed JSON Schema files, contracts/schemas/*.json, from the contract types.

    python infra/schemas.py        (`make schemas`)

The contracts render the schemas and `python -m contracts check` compares them with the files; the
writing is here, because `contracts` does no I/O (tests/unit/test_layout.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from contracts._schema import SCHEMA_DIR, SCHEMA_TYPES, render_schema

__all__ = ["write_schemas"]


def write_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write one file per contract type into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for stem in SCHEMA_TYPES:
        path = directory / f"{stem}.json"
        path.write_text(render_schema(stem), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args(argv)
    for path in write_schemas():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
