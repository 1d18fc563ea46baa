"""Text from kits, checked on the way in and made safe on the way out.

A kit's text fields (kit and device ids, metric, unit, firmware, the FHIR fields the bridge reads)
are refused when they hold a control character (C0 including NUL, DEL, C1) or an unpaired
surrogate, or are longer than the field allows: `text_problem` says why, in words that never quote
the value itself. Invalid UTF-8 never gets this far: the JSON decoder refuses it (`malformed`).

Rejections carry what the kit sent, for operators, so every later stage has to be able to store
them: `safe_rejection` escapes control characters repr-style (NUL becomes the four characters
`\\x00`), writes bytes that are not UTF-8 as `\\xNN`, and bounds every text field. PostgreSQL
refuses NUL in text (CharacterNotInRepertoire), which is how one kit once stopped the archive.
"""

from __future__ import annotations

import re

import msgspec

from contracts import MAX_RAW_EXCERPT_BYTES, Rejection

__all__ = [
    "MAX_DETAIL_BYTES",
    "MAX_FIELD_BYTES",
    "UNREADABLE",
    "printable",
    "printable_bytes",
    "safe_rejection",
    "text_problem",
    "unreadable",
]

MAX_DETAIL_BYTES = 2048  # a rejection's detail, in UTF-8 bytes after escaping
MAX_FIELD_BYTES = 256  # a rejection's other text fields (topic, kit, patient, metric, unit)

# C0 (with NUL, tab and newline: no field of a kit's message has a use for them), DEL, C1, and the
# surrogates, which cannot be written as UTF-8 at all
_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_ELLIPSIS = "…"

# What msgspec raises for bytes that are no JSON text at all: DecodeError, UnicodeDecodeError for a
# byte that is not UTF-8 inside a string, RecursionError for JSON nested thousands of levels deep
# (in a field a decoder skips, or in the whole payload)
UNREADABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def text_problem(value: str, *, max_chars: int) -> str | None:
    """Why `value` cannot be taken as a text field (a phrase to follow the field's name), or None."""
    found = _FORBIDDEN.search(value)
    if found is not None:
        code = ord(found.group())
        what = "an unpaired surrogate" if code >= 0xD800 else "the control character"
        return f"holds {what} U+{code:04X} at position {found.start()}"
    if len(value) > max_chars:
        return f"is {len(value):,} characters long; at most {max_chars} are taken"
    return None


def unreadable(exc: BaseException) -> str:
    """The detail of a `malformed` rejection, for one of UNREADABLE."""
    if isinstance(exc, RecursionError):
        return "JSON nested too deeply to read; a kit message needs only a few levels"
    return f"not valid UTF-8 JSON: {exc}"


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(value: str, *, max_bytes: int) -> str:
    """`value` with control characters and surrogates escaped, cut to `max_bytes` of UTF-8 ("…" marks a cut).

    Idempotent: what it returns comes back unchanged.
    """
    escaped = _FORBIDDEN.sub(_escape, value) if _FORBIDDEN.search(value) else value
    if len(escaped) * 4 <= max_bytes:  # no character takes more than four bytes
        return escaped
    encoded = escaped.encode()
    if len(encoded) <= max_bytes:
        return escaped
    keep = max_bytes - len(_ELLIPSIS.encode())
    return encoded[: max(0, keep)].decode("utf-8", errors="ignore") + _ELLIPSIS


def printable_bytes(payload: bytes, *, max_bytes: int) -> str:
    """Raw bytes as printable text: UTF-8 where they are, `\\xNN` where not, cut to `max_bytes`."""
    # escaping never shortens, so the first `max_bytes` bytes are all that can show
    text = payload[: max_bytes + 1].decode("utf-8", errors="backslashreplace")
    return printable(text, max_bytes=max_bytes)


def _field(value: str | None) -> str | None:
    return None if value is None else printable(value, max_bytes=MAX_FIELD_BYTES)


def safe_rejection(rejection: Rejection) -> Rejection:
    """The rejection with every text field printable and bounded, so any later stage can store it."""
    r = rejection
    return msgspec.structs.replace(
        r,
        detail=printable(r.detail, max_bytes=MAX_DETAIL_BYTES),
        source_topic=printable(r.source_topic, max_bytes=MAX_FIELD_BYTES),
        kit_id=_field(r.kit_id),
        patient_id=_field(r.patient_id),
        metric=_field(r.metric),
        reported_unit=_field(r.reported_unit),
        raw_excerpt=printable(r.raw_excerpt, max_bytes=MAX_RAW_EXCERPT_BYTES),
    )
