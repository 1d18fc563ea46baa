"""JSON Schema files generated from the contract types, for clients that are not Python.

The files in `contracts/schemas/` are committed; `python -m contracts check` (run by `make check`
and the tests) fails when they no longer match the types. The contracts write no files: `make schemas`
(infra/schemas.py) regenerates them from `render_schema`.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import msgspec

from contracts._alert import AlertEvent
from contracts._answers import KitAnswersMessage, QuestionnaireAnswer
from contracts._careplan import CarePlan
from contracts._kit import DeliveryReceipt, KitReadingMessage, KitStatusMessage
from contracts._kitmsg import KitAck, KitAckEvent, KitCommand, KitCommandRequest
from contracts._quarantine import Quarantined
from contracts._records import KitStatusEvent, Measurement, Rejection

__all__ = ["SCHEMA_DIR", "SCHEMA_TYPES", "render_schema", "stale_schemas"]

SCHEMA_DIR = Path(__file__).parent / "schemas"

# file stem -> contract type; the stem is the `schema` tag every payload carries, minus "vaktrom."
SCHEMA_TYPES: dict[str, type[msgspec.Struct]] = {
    "kit-reading.v1": KitReadingMessage,
    "kit-status.v1": KitStatusMessage,
    "receipt.v1": DeliveryReceipt,
    "measurement.v1": Measurement,
    "rejection.v1": Rejection,
    "kit-status-event.v1": KitStatusEvent,
    "alert.v1": AlertEvent,
    "careplan.v1": CarePlan,
    "quarantined.v1": Quarantined,
    "kit-answers.v1": KitAnswersMessage,
    "answer.v1": QuestionnaireAnswer,
    "kit-command.v1": KitCommand,
    "kit-command-request.v1": KitCommandRequest,
    "kit-ack.v1": KitAck,
    "kit-ack-event.v1": KitAckEvent,
}


def _clean_descriptions(node: Any) -> Any:
    """msgspec copies docstrings verbatim; dedent them so the files read well."""
    if isinstance(node, dict):
        return {
            key: inspect.cleandoc(value)
            if key == "description" and isinstance(value, str)
            else _clean_descriptions(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_clean_descriptions(item) for item in node]
    return node


def _schema(kind: type[msgspec.Struct], stem: str) -> dict[str, Any]:
    generated = _clean_descriptions(msgspec.json.schema(kind))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://vaktrom.org/schemas/{stem}.json",
        "title": f"vaktrom.{stem}",
        **generated,
    }


def render_schema(stem: str) -> str:
    """The committed text of one schema file: stable key order, two-space indent, final newline."""
    return json.dumps(_schema(SCHEMA_TYPES[stem], stem), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def stale_schemas(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing or differ from what the types generate."""
    stale = []
    for stem in SCHEMA_TYPES:
        path = directory / f"{stem}.json"
        if not path.exists() or path.read_text(encoding="utf-8") != render_schema(stem):
            stale.append(path.name)
    return stale
