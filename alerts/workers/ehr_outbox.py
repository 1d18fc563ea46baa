"""Delivery of the record documents in the EHR outbox (`alerts.ehr` queues them with each resolution).

`deliver_due` takes due rows one at a time, in three steps, so no transaction and no row lock is
held while the endpoint is talked to:

    claim    one due row (FOR UPDATE SKIP LOCKED), count the attempt and push `next_attempt_at` a
             lease ahead; committed, so another service instance does not take it while it is sent
    post     the stored bytes with their stored signature, outside any transaction
    record   the outcome in a new transaction (when that fails, the attempt is already counted and
             the lease makes the next try wait; nothing is sent again at once)

The outcomes:

    2xx                       delivered: `delivered_at` is set and the row is never taken again
    400, 409, 413, 415, 422   given up at once: the receiver refused the document itself; sending the
                              same bytes again cannot help (the reason is kept and shown)
    anything else             a failed attempt (unreachable, 5xx, 3xx, 401, 403, 404, ...): retried
                              with back-off (5 s doubling, at most 10 min) until `give_up_at`, then
                              given up; the reason of the last attempt is shown meanwhile

A round ends at the first unreachable or 5xx answer (the next rows would fare no better) and starts
no attempt after `round_s`, so a round stays well inside the worker's stall budget. Rows whose
deadline passed before they were tried (the service was down) are given up without being sent.

Times are the database's (`clock_timestamp()`) unless a test passes `now`. Each outcome also goes
into the alert's timeline. A crash after the endpoint accepted a document but before `delivered_at`
was committed sends it once more when the lease ends, with the same `Bundle.identifier` and
`Idempotency-Key`, which the receiver deduplicates on (docs/ehr-documentation.md).
"""

from __future__ import annotations

import ipaddress
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
import psycopg
from psycopg.types.json import Jsonb

__all__ = [
    "REFUSED",
    "Answer",
    "Delivered",
    "EhrEndpoint",
    "Poster",
    "backoff",
    "check_url",
    "clean",
    "deliver_due",
]

log = logging.getLogger(__name__)

# The answers that refuse the document itself; every other non-2xx answer is retried.
REFUSED = frozenset({400, 409, 413, 415, 422})
MAX_ANSWER_BYTES = 4096  # of a refusal's body; 200 characters of it are kept
_KEPT_CHARS = 200
# Control characters (but tab and newline), lone surrogates and the two non-characters: PostgreSQL
# refuses NUL in text and JSONB, and the others show badly; replaced before anything is stored.
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class Answer:
    """What the endpoint said: an HTTP status, or None with `error` when it could not be reached."""

    status: int | None
    error: str = ""


class Poster(Protocol):
    def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        """Send one document; never raises for a refusal or an unreachable endpoint."""


def check_url(url: str) -> str:
    """Why `url` cannot be the EHR endpoint ("" when it can): http(s) with a host that is a valid
    (IDNA) name or an address, and https unless the host is this machine."""
    try:
        parsed = httpx.URL(url)
        host = parsed.host
        if host and not _is_address(host):
            host.encode("idna")
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        return f"is not a usable URL ({exc})"
    if parsed.scheme not in {"http", "https"} or not host or " " in url:
        return "must be an http(s):// URL with a host name"
    if parsed.scheme == "http" and not _is_loopback(host):
        return (
            "uses http:// to another machine, which would send signed patient documents in clear; "
            "use https:// (http:// is only for an endpoint on this machine)"
        )
    return ""


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    return _is_address(host) and ipaddress.ip_address(host).is_loopback


class EhrEndpoint:
    """The configured EHR endpoint, over HTTP(S), without redirects and without any proxy the
    environment names (HTTP_PROXY and the like are for other traffic, not patient documents).

    An attempt lasts about `timeout_s` at most: connecting and each read are bounded by it, and a
    refusal's answer is streamed, at most MAX_ANSWER_BYTES of it read, with the attempt's deadline
    checked between chunks (a trickle is cut; only headers sent byte by byte could stretch it)."""

    def __init__(self, url: str, *, timeout_s: float) -> None:
        self._url = url
        self._timeout_s = timeout_s
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=False, trust_env=False)

    def post(self, body: bytes, headers: dict[str, str]) -> Answer:
        deadline = time.monotonic() + self._timeout_s
        kept = bytearray()
        try:
            with self._client.stream("POST", self._url, content=body, headers=headers) as response:
                status = response.status_code
                if 200 <= status < 300:
                    return Answer(status)  # the body is not needed; closing drops the connection
                for chunk in response.iter_raw():
                    kept += chunk
                    if len(kept) >= MAX_ANSWER_BYTES or time.monotonic() > deadline:
                        break
        except Exception as exc:
            return Answer(None, clean(f"endpoint unreachable: {type(exc).__name__}: {exc}"))
        reason = bytes(kept[:MAX_ANSWER_BYTES]).decode("utf-8", "replace")
        return Answer(status, clean(reason)[:_KEPT_CHARS].strip())

    def close(self) -> None:
        self._client.close()


def clean(text: str) -> str:
    """`text` without the characters PostgreSQL's text and JSONB columns refuse (NUL) or a page
    shows badly (other controls), so an endpoint's words can always be stored."""
    return _UNPRINTABLE.sub("\ufffd", text)


@dataclass(frozen=True, slots=True)
class Delivered:
    """What one round did."""

    delivered: int = 0
    failed: int = 0  # attempts that will be retried
    given_up: int = 0


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(5 * 2 ** max(attempts - 1, 0), 600))


_NOW = "coalesce(%(now)s::timestamptz, clock_timestamp())"

_CLAIM = f"""
UPDATE ehr_outbox SET attempts = attempts + 1, next_attempt_at = {_NOW} + %(lease)s::interval
WHERE outbox_id = (
    SELECT outbox_id FROM ehr_outbox
    WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt_at <= {_NOW}
      AND give_up_at > {_NOW}
    ORDER BY next_attempt_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING outbox_id, document_id::text, episode_id, body, signature, key_id, attempts, give_up_at
"""  # noqa: S608 (only the constant _NOW is put in)

# Due rows whose deadline passed before they could be tried: given up unsent, each with its line.
_OVERDUE = f"""
WITH gone AS (
    UPDATE ehr_outbox SET given_up_at = {_NOW},
        last_error = coalesce(last_error || '; ', '')
                     || 'not sent: the delivery deadline passed before an attempt (was the service stopped?)'
    WHERE outbox_id IN (
        SELECT outbox_id FROM ehr_outbox
        WHERE delivered_at IS NULL AND given_up_at IS NULL AND give_up_at <= {_NOW}
          AND next_attempt_at <= {_NOW}
        FOR UPDATE SKIP LOCKED
    )
    RETURNING episode_id, document_id, attempts, last_error, given_up_at
), logged AS (
    INSERT INTO alert_timeline (episode_id, kind, at, detail)
    SELECT episode_id, 'record_given_up', given_up_at,
           jsonb_build_object('document_id', document_id::text, 'attempt', attempts, 'status', NULL,
                              'error', last_error)
    FROM gone
)
SELECT count(*) FROM gone
"""  # noqa: S608 (only the constant _NOW is put in)


def deliver_due(
    conn: psycopg.Connection[Any],
    endpoint: Poster,
    *,
    now: datetime | None = None,
    limit: int = 20,
    round_s: float = 20.0,
    lease: timedelta = timedelta(minutes=2),
    clock: Callable[[], float] = time.monotonic,
) -> Delivered:
    """Send up to `limit` due documents, starting none after `round_s` seconds and stopping at the
    first unreachable or 5xx answer. `lease` must exceed one attempt's longest duration."""
    done = Delivered()
    started = clock()
    for _ in range(limit):
        if done != Delivered() and clock() - started >= round_s:
            break
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_CLAIM, {"now": now, "lease": lease})
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
        attempt = _Attempt(outbox_id, document_id, episode_id, attempts, give_up_at)
        try:
            outcome = _record(conn, answer, attempt, now=now)
        except psycopg.Error as exc:  # counted at the claim; tried again when the lease ends
            log.warning(
                "record document %s: the outcome of attempt %d was not recorded (%s); "
                "it is tried again when its lease ends",
                document_id, attempts, type(exc).__name__,
            )  # fmt: skip
            outcome = "failed"
        done = Delivered(
            done.delivered + (outcome == "delivered"),
            done.failed + (outcome == "failed"),
            done.given_up + (outcome == "given_up"),
        )
        if answer.status is None or answer.status >= 500:
            break  # the endpoint is in trouble: the other rows wait for the next round
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_OVERDUE, {"now": now})
        overdue = cur.fetchone()
    return Delivered(done.delivered, done.failed, done.given_up + (overdue[0] if overdue else 0))


@dataclass(frozen=True, slots=True)
class _Attempt:
    outbox_id: int
    document_id: str
    episode_id: str
    number: int
    give_up_at: datetime


def _record(conn: psycopg.Connection[Any], answer: Answer, attempt: _Attempt, *, now: datetime | None) -> str:
    """Store one attempt's outcome in its own transaction: delivered, failed or given_up."""
    with conn.transaction(), conn.cursor() as cur:
        at = now
        if at is None:
            cur.execute("SELECT clock_timestamp()")
            at = cur.fetchone()[0]  # type: ignore[index]
        detail: dict[str, Any] = {
            "document_id": attempt.document_id,
            "attempt": attempt.number,
            "status": answer.status,
        }
        if answer.status is not None and 200 <= answer.status < 300:
            cur.execute(
                "UPDATE ehr_outbox SET delivered_at = %s, last_status = %s, last_error = NULL "
                "WHERE outbox_id = %s",
                (at, answer.status, attempt.outbox_id),
            )
            _timeline(cur, attempt.episode_id, "record_delivered", at, detail)
            return "delivered"
        error = clean(_reason(answer))[:500]
        final = answer.status in REFUSED
        retry_at = at + backoff(attempt.number)
        give_up = final or retry_at > attempt.give_up_at
        if give_up and not final:
            error = f"{error[:400]}; gave up after {attempt.number} attempts (the delivery deadline passed)"
        cur.execute(
            "UPDATE ehr_outbox SET last_error = %s, last_status = %s, next_attempt_at = %s, "
            "given_up_at = CASE WHEN %s THEN %s::timestamptz END WHERE outbox_id = %s",
            (error, answer.status, retry_at, give_up, at, attempt.outbox_id),
        )
        detail["error"] = error
        if give_up:
            _timeline(cur, attempt.episode_id, "record_given_up", at, detail)
            log.warning(
                "record document %s not delivered, given up (HTTP %s)", attempt.document_id, answer.status
            )
            return "given_up"
        detail["retry_at"] = retry_at.isoformat()
        _timeline(cur, attempt.episode_id, "record_attempt_failed", at, detail)
        log.info(
            "record document %s: attempt %d failed (HTTP %s); retrying",
            attempt.document_id, attempt.number, answer.status,
        )  # fmt: skip
        return "failed"


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
