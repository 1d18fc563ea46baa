"""The EHR outbox's front: the signing key, queueing a resolution's record document in the
resolution's own transaction, and what the console reads of the outbox (table `ehr_outbox`,
migration 0024). Delivery is `alerts.workers.ehr_outbox`'s. docs/ehr-documentation.md.

Signature: Ed25519 over the exact bytes of the body, sent as

    X-Vaktrom-Signature: ed25519=<base64 of the 64-byte signature>
    X-Vaktrom-Key-Id:    <first 16 hex digits of SHA-256 of the raw 32-byte public key>

`verify` is the receiver's side of it; the receiver holds the public key only.
"""

from __future__ import annotations

import base64
import hashlib
import stat
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerts.record import build_record_document, document_bytes
from streams.archive.read import newest

__all__ = ["Recorder", "Signer", "SigningKeyError", "entries", "key_id", "send_again", "verify"]

SIGNATURE_PREFIX = "ed25519="
# A document carries at most this many readings: the newest, and always those that triggered the
# alert (an episode open for weeks of frequent readings would otherwise make a document of megabytes).
MAX_READINGS = 200


class SigningKeyError(ValueError):
    """The configured signing key cannot be used (the message says why and what to do)."""


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """An Ed25519 private key, read once from a PEM file (PKCS#8, unencrypted)."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.key_id = key_id(key.public_key())

    @classmethod
    def from_file(cls, path: str, *, env: str) -> Signer:
        try:
            mode = Path(path).stat().st_mode
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise SigningKeyError(f"{env}={path!r}: cannot read the key file ({exc.strerror})") from None
        if mode & 0o077:
            # whoever can read the key can sign notes the EHR files in a patient's record
            raise SigningKeyError(
                f"{env}={path!r} is readable by other users (mode {stat.S_IMODE(mode):04o}); the key must be "
                f"0600, readable by the service's user only: chmod 600 {path}"
            )
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise SigningKeyError(
                f"{env}={path!r} is not an unencrypted PEM private key; make one with "
                "`openssl genpkey -algorithm ed25519 -out ehr-signing.pem`"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(f"{env}={path!r} holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)

    def sign(self, body: bytes) -> str:
        return SIGNATURE_PREFIX + base64.b64encode(self._key.sign(body)).decode()

    def public_pem(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def verify(public_pem: bytes, body: bytes, signature: str) -> bool:
    """What a receiver checks: the header's signature is the sender's key's over exactly `body`."""
    if not signature.startswith(SIGNATURE_PREFIX):
        return False
    try:
        key = serialization.load_pem_public_key(public_pem)
        raw = base64.b64decode(signature.removeprefix(SIGNATURE_PREFIX), validate=True)
    except ValueError:
        return False
    if not isinstance(key, Ed25519PublicKey):
        return False
    try:
        key.verify(raw, body)
    except InvalidSignature:
        return False
    return True


_ALERT = """
SELECT a.episode_id, a.patient_id, a.rule_id, a.rule_source, a.metric, a.severity, a.explanation,
       a.opened_at, a.last_seen_at, a.event, coalesce(u.display_name, %(user)s) AS nurse_name
FROM alerts a LEFT JOIN users u ON u.username = %(user)s
WHERE a.episode_id = %(eid)s
"""


@dataclass(frozen=True, slots=True)
class Recorder:
    """Puts a resolution's record document into the outbox (the EHR endpoint is configured)."""

    signer: Signer
    give_up_after: timedelta
    readings_before: timedelta  # how far before the alert opened the readings start
    labels: dict[str, str]  # resolution code -> its English display

    def queue(
        self, cur: psycopg.Cursor[Any], *, episode_id: str, user: str, resolution: str, note: str,
        resolved_at: datetime,
    ) -> str:  # fmt: skip
        """Build, sign and store the document in the caller's transaction; its document id."""
        conn = cur.connection
        with conn.cursor(row_factory=dict_row) as read:
            read.execute(_ALERT, {"eid": episode_id, "user": user})
            alert = read.fetchone()
        if alert is None:
            raise LookupError(f"no alert {episode_id}")
        start = alert["opened_at"] - self.readings_before
        end = max(resolved_at, alert["last_seen_at"]) + timedelta(microseconds=1)
        readings = (
            newest(conn, alert["patient_id"], start, end, limit=MAX_READINGS, also=_evidence(alert["event"]))
            if start < end
            else []
        )
        document_id = str(uuid.uuid4())
        document = build_record_document(
            document_id=document_id, resolved_at=resolved_at, alert=alert, readings=readings, nurse=user,
            nurse_name=alert["nurse_name"], resolution=resolution,
            resolution_display=self.labels.get(resolution, resolution), note=note,
        )  # fmt: skip
        body = document_bytes(document)
        cur.execute(
            "INSERT INTO ehr_outbox (document_id, episode_id, patient_id, resolved_by, body, signature, "
            "key_id, created_at, next_attempt_at, give_up_at) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (document_id, episode_id, alert["patient_id"], user, body, self.signer.sign(body),
             self.signer.key_id, resolved_at, resolved_at, resolved_at + self.give_up_after),
        )  # fmt: skip
        cur.execute(
            "INSERT INTO alert_timeline (episode_id, kind, at, detail) VALUES (%s, 'record_queued', %s, %s)",
            (episode_id, resolved_at, Jsonb({"document_id": document_id, "readings": len(readings)})),
        )
        return document_id


def _evidence(event: dict[str, Any] | None) -> set[str]:
    """The measurement ids of the readings that triggered the alert."""
    return {e["measurement_id"] for key in ("worst", "latest") if event and (e := event.get(key))}


_ENTRIES = """
SELECT o.outbox_id, o.document_id::text, o.episode_id, o.patient_id, o.resolved_by, o.created_at,
       o.attempts, o.last_error, o.last_status, o.next_attempt_at, o.give_up_at, o.delivered_at,
       o.given_up_at, o.give_up_at <= clock_timestamp() AS overdue, a.rule_id, p.team_id
FROM ehr_outbox o JOIN alerts a USING (episode_id)
LEFT JOIN patient_directory p ON p.patient_id = a.patient_id
WHERE (%(team)s::text IS NULL OR p.team_id = %(team)s) AND (NOT %(open)s OR o.delivered_at IS NULL)
ORDER BY o.given_up_at IS NULL, o.created_at DESC
LIMIT %(limit)s
"""


def entries(
    conn: psycopg.Connection[Any], *, team_id: str | None, undelivered: bool = False, limit: int = 200
) -> list[dict[str, Any]]:
    """Outbox entries of a team's patients (None: every team), given-up first, then newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_ENTRIES, {"team": team_id, "open": undelivered, "limit": limit})
        found = cur.fetchall()
    conn.rollback()  # read-only: end the snapshot
    for row in found:
        row["state"] = _state(row)
    return found


def _state(row: dict[str, Any]) -> str:
    if row["delivered_at"] is not None:
        return "delivered"
    if row["given_up_at"] is not None or row["overdue"]:  # past its deadline: the worker gives it up
        return "not_delivered"
    return "retrying" if row["attempts"] else "queued"


_SEND_AGAIN = """
WITH again AS (
    UPDATE ehr_outbox SET given_up_at = NULL, next_attempt_at = clock_timestamp(),
                          give_up_at = clock_timestamp() + %(window)s::interval
    WHERE episode_id = %(eid)s AND delivered_at IS NULL
      AND (given_up_at IS NOT NULL OR give_up_at <= clock_timestamp())
    RETURNING document_id::text AS document_id, attempts
)
INSERT INTO alert_timeline (episode_id, kind, at, detail)
SELECT %(eid)s::text, 'record_queued', clock_timestamp(),
       jsonb_build_object('document_id', document_id, 'again', true, 'by', %(user)s::text,
                          'attempts', attempts)
FROM again
RETURNING detail->>'document_id'
"""


def send_again(conn: psycopg.Connection[Any], episode_id: str, *, user: str, window: timedelta) -> list[str]:
    """Put the alert's record documents that were not delivered back in the outbox, with a new
    deadline `window` from now, and say so in its timeline (committed); their document ids. The
    caller has checked that `user` may act on the alert (its team)."""
    with conn.cursor() as cur:
        cur.execute(_SEND_AGAIN, {"eid": episode_id, "user": user, "window": window})
        again = [str(row[0]) for row in cur.fetchall()]
    conn.commit()
    return again
