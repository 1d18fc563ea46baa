"""Delivery of the record documents in the EHR outbox (`alerts.ehr` queues them with each resolution).

`deliver_due` takes due rows one at a time (FOR UPDATE SKIP LOCKED, so several service instances
never send the same row at once), POSTs the stored bytes with their stored signature and records
the outcome in the same transaction:

    2xx                       delivered: `delivered_at` is set and the row is never taken again
    network error, 408, 429,  a failed attempt: retried with back-off (5 s doubling, at most 10 min)
    5xx                       until `give_up_at`, then given up
    any other 4xx             given up at once: the receiver refused the document; sending the same
                              bytes again cannot help (the reason is kept and shown)

Each outcome also goes into the alert's timeline. A crash after the endpoint accepted a document
but before `delivered_at` was committed sends it once more, with the same `Bundle.identifier` and
`Idempotency-Key`, which the receiver deduplicates on (docs/ehr-documentation.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
import psycopg
from psycopg.types.json import Jsonb

__all__ = ["Answer", "Delivered", "EhrEndpoint", "Poster", "backoff", "deliver_due"]

log = logging.getLogger(__name__)

_RETRIED = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True)
class Answer:
    """What the endpoint said: an HTTP status, or None with `error` when it could not be reached."""

    status: int | None
    error: str = ""


class Poster(Protocol):
    def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        """Send one document; never raises for a refusal or an unreachable endpoint."""


class EhrEndpoint:
    """The configured EHR endpoint, over HTTP(S), without redirects."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        self._url = url
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=False)

    def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        try:
            response = self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Answer(None, f"endpoint unreachable: {type(exc).__name__}: {exc}")
        reason = response.text[:200].strip() if response.status_code >= 300 else ""
        return Answer(response.status_code, reason)

    def close(self) -> None:
        self._client.close()


@dataclass(frozen=True, slots=True)
class Delivered:
    """What one round did."""

    delivered: int = 0
    failed: int = 0  # attempts that will be retried
    given_up: int = 0


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(5 * 2 ** max(attempts - 1, 0), 600))


_NEXT = """
SELECT outbox_id, document_id::text, episode_id, body, signature, key_id, attempts, give_up_at
FROM ehr_outbox
WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt_at <= %(now)s
ORDER BY next_attempt_at
LIMIT 1
FOR UPDATE SKIP LOCKED
"""


def deliver_due(
    conn: psycopg.Connection[Any], endpoint: Poster, *, now: datetime, limit: int = 20
) -> Delivered:
    """Send up to `limit` due documents, each in its own transaction."""
    delivered = failed = given_up = 0
    for _ in range(limit):
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_NEXT, {"now": now})
            row = cur.fetchone()
            if row is None:
                break
            outbox_id, document_id, episode_id, body, signature, key, attempts, give_up_at = row
            headers = {
                "Content-Type": "application/fhir+json",
                "User-Agent": "vaktrom-alerts",
                "Idempotency-Key": document_id,
                "X-Vaktrom-Document": document_id,
                "X-Vaktrom-Signature": signature,
                "X-Vaktrom-Key-Id": key,
            }
            answer = endpoint.post(bytes(body), headers)
            attempts += 1
            detail: dict[str, Any] = {
                "document_id": document_id,
                "attempt": attempts,
                "status": answer.status,
            }
            if answer.status is not None and 200 <= answer.status < 300:
                delivered += 1
                cur.execute(
                    "UPDATE ehr_outbox SET attempts = %s, delivered_at = %s, last_status = %s, "
                    "last_error = NULL WHERE outbox_id = %s",
                    (attempts, now, answer.status, outbox_id),
                )
                _timeline(cur, episode_id, "record_delivered", now, detail)
                continue
            error = _reason(answer)
            final = answer.status is not None and answer.status < 500 and answer.status not in _RETRIED
            retry_at = now + backoff(attempts)
            give_up = final or retry_at > give_up_at
            if give_up and not final:
                error = f"{error}; gave up after {attempts} attempts (the delivery deadline passed)"
            cur.execute(
                "UPDATE ehr_outbox SET attempts = %s, last_error = %s, last_status = %s, "
                "next_attempt_at = %s, given_up_at = CASE WHEN %s THEN %s::timestamptz END "
                "WHERE outbox_id = %s",
                (attempts, error[:500], answer.status, retry_at, give_up, now, outbox_id),
            )
            detail["error"] = error[:500]
            if give_up:
                given_up += 1
                _timeline(cur, episode_id, "record_given_up", now, detail)
                log.warning(
                    "record document %s not delivered, given up (HTTP %s)", document_id, answer.status
                )
            else:
                failed += 1
                detail["retry_at"] = retry_at.isoformat()
                _timeline(cur, episode_id, "record_attempt_failed", now, detail)
                log.info(
                    "record document %s: attempt %d failed (HTTP %s); retrying",
                    document_id,
                    attempts,
                    answer.status,
                )
    return Delivered(delivered, failed, given_up)


def _reason(answer: Answer) -> str:
    if answer.status is None:
        return answer.error
    said = f": {answer.error}" if answer.error else ""
    return f"the endpoint answered HTTP {answer.status}{said}"


def _timeline(
    cur: psycopg.Cursor[Any], episode_id: str, kind: str, at: datetime, detail: dict[str, Any]
) -> None:
    cur.execute(
        "INSERT INTO alert_timeline (episode_id, kind, at, detail) VALUES (%s, %s, %s, %s)",
        (episode_id, kind, at, Jsonb(detail)),
    )
