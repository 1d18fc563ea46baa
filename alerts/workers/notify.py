"""Notifications of escalation steps: a small channel interface, webhook and e-mail, and the outbox.

A step taken by `escalation.escalate_due` writes one outbox row per configured target in the same
transaction (`enqueue`), so a step is never lost. `deliver_due` sends them one at a time and
records the outcome, retrying with backoff; whatever a channel raises fails that notification
only, so one broken route does not hold up the others. A crash between sending and recording
sends that one again, so delivery is at least once and each carries a delivery id receivers can
deduplicate on.

What leaves the centre is deliberately thin: severity, rule, how long the alert has waited, the
patient's pseudonym and a link into the console; no names, no measured values (e-mail is not a
safe place for health data).

Webhook: POST of JSON with

    X-Vaktrom-Delivery:  the outbox id
    X-Vaktrom-Timestamp: Unix seconds
    X-Vaktrom-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the shared secret>

`verify_signature` is the receiver's side of it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import smtplib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from typing import Any, Protocol

import httpx
import psycopg
from psycopg.types.json import Jsonb

from alerts.i18n import N_, gettext

__all__ = [
    "Channel",
    "Email",
    "Note",
    "NotifyError",
    "Route",
    "Webhook",
    "deliver_due",
    "enqueue",
    "parse_routes",
    "sign",
    "verify_signature",
]

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
STEP_NAMES = {
    0: N_("out-of-hours service"), 1: N_("team"), 2: N_("coordinator on duty"), 3: N_("on-call physician"),
}  # fmt: skip
# `role:<name>` in a step's routes: whoever the patient's team has rostered in that role at the
# moment of the step (alerts.duty resolves it; issue #32).
ROLES = ("nurse_on_duty", "coordinator", "on_call_physician")
SEVERITY_WORDS = {"red": N_("red"), "yellow": N_("yellow"), "info": N_("info")}


class NotifyError(Exception):
    """A notification could not be delivered (the message says why; it is retried)."""


@dataclass(frozen=True, slots=True)
class Route:
    channel: str  # 'webhook', 'email', or 'role' (resolved through the duty roster before sending)
    target: str  # URL, address, or role name


@dataclass(frozen=True, slots=True)
class Note:
    """One notification as sent."""

    delivery_id: int
    episode_id: str
    patient_id: str
    severity: str
    rule_id: str
    step: int
    waiting_s: float
    link: str
    language: str = "en"  # the recipient's (a user with this e-mail address), else the centre's

    def payload(self) -> dict[str, Any]:
        return {
            "type": "vaktrom.escalation.v1",
            "delivery_id": self.delivery_id,
            "episode_id": self.episode_id,
            "patient_id": self.patient_id,
            "severity": self.severity,
            "rule_id": self.rule_id,
            "step": self.step,
            "to": STEP_NAMES[self.step],
            "waiting_s": round(self.waiting_s),
            "link": self.link,
        }

    def subject(self) -> str:
        return "[Vaktrom] " + gettext(
            self.language,
            "%(severity)s alert unclaimed for %(minutes)s min (%(rule)s): escalated to the %(to)s",
            **self._words(), rule=self.rule_id,
        )  # fmt: skip

    def text(self) -> str:
        """The e-mail's body: what happened, the link, and that no patient details travel with it."""
        words = self._words()
        return "".join((
            gettext(
                self.language, "A %(level)s alert (%(rule)s) has waited %(minutes)s minutes without being "
                "claimed and is escalated to the %(to)s.", **words, rule=self.rule_id,
            ), "\n\n",
            gettext(self.language, "Open it in the console: %(link)s", link=self.link), "\n\n",
            gettext(self.language, "This message carries no patient details; they are in the console."), "\n",
        ))  # fmt: skip

    def _words(self) -> dict[str, str]:
        level = gettext(self.language, SEVERITY_WORDS.get(self.severity, self.severity))
        return {
            "severity": level.upper(),
            "level": level,
            "minutes": str(int(self.waiting_s // 60)),
            "to": gettext(self.language, STEP_NAMES[self.step]),
        }


class Channel(Protocol):
    kind: str

    def send(self, target: str, note: Note) -> None:
        """Deliver or raise NotifyError."""


def parse_routes(text: str, *, env: str) -> list[Route]:
    """`https://...` (webhook), `mailto:someone@example.org` (e-mail) and `role:on_call_physician`
    (whoever holds the role then: nurse_on_duty, coordinator, on_call_physician), separated by commas."""
    routes = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if item.startswith(("https://", "http://")):
            routes.append(Route("webhook", item))
        elif item.startswith("mailto:") and "@" in item:
            routes.append(Route("email", item.removeprefix("mailto:")))
        elif item.startswith("role:") and item.removeprefix("role:") in ROLES:
            routes.append(Route("role", item.removeprefix("role:")))
        else:
            raise ValueError(
                f"{env}: {item!r} is neither an http(s):// URL, a mailto: address nor a role "
                f"(role:{', role:'.join(ROLES)})"
            )
    return routes


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: bytes, timestamp: str, body: bytes, signature: str, *, now: float, tolerance_s: float = 300
) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent (no replays)."""
    try:
        fresh = abs(now - int(timestamp)) <= tolerance_s
    except ValueError:
        return False
    return fresh and hmac.compare_digest(sign(secret, timestamp, body), signature)


class Webhook:
    kind = "webhook"

    def __init__(self, secret: bytes, *, timeout_s: float = 5.0) -> None:
        self._secret = secret
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=False)

    def send(self, target: str, note: Note) -> None:
        body = json.dumps(note.payload(), separators=(",", ":")).encode()
        stamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "vaktrom-alerts",
            "X-Vaktrom-Delivery": str(note.delivery_id),
            "X-Vaktrom-Timestamp": stamp,
            "X-Vaktrom-Signature": sign(self._secret, stamp, body),
        }
        try:
            response = self._client.post(target, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise NotifyError(f"webhook unreachable: {type(exc).__name__}: {exc}") from None
        if not 200 <= response.status_code < 300:
            raise NotifyError(f"webhook answered HTTP {response.status_code}")

    def close(self) -> None:
        self._client.close()


class Email:
    kind = "email"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        starttls: bool = False,
        username: str = "",
        password: str = "",
        timeout_s: float = 10.0,
    ) -> None:
        self._host, self._port, self._sender = host, port, sender
        self._starttls, self._username, self._password = starttls, username, password
        self._timeout = timeout_s

    def send(self, target: str, note: Note) -> None:
        message = EmailMessage()
        message["From"] = self._sender
        message["To"] = target
        message["Subject"] = note.subject()
        message["X-Vaktrom-Delivery"] = str(note.delivery_id)
        message.set_content(note.text())
        try:
            with smtplib.SMTP(self._host, self._port, timeout=self._timeout) as smtp:
                if self._starttls:
                    smtp.starttls()
                if self._username:
                    smtp.login(self._username, self._password)
                smtp.send_message(message)
        except (OSError, smtplib.SMTPException) as exc:
            raise NotifyError(f"e-mail not accepted by {self._host}:{self._port}: {exc}") from None


def enqueue(
    cur: psycopg.Cursor[Any],
    episode_id: str,
    step: int,
    routes: Sequence[Route],
    *,
    at: datetime,
    alarm_round: int = 1,
) -> None:
    """Outbox rows for one step taken `at` (in the caller's transaction); a repeated step of the same
    alarm round adds nothing (an alert that needs action again notifies again: migration 0009)."""
    for route in routes:
        cur.execute(
            "INSERT INTO notifications (episode_id, alarm_round, step, channel, target, created_at, "
            "next_attempt_at) VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (episode_id, alarm_round, step, route.channel, route.target, at, at),
        )


_NEXT = """
SELECT n.notification_id, n.episode_id, n.step, n.channel, n.target, n.attempts,
       a.patient_id, a.severity, a.rule_id, coalesce(a.rearmed_at, a.received_at),
       (SELECT u.language FROM users u
        WHERE n.channel = 'email' AND u.active AND lower(u.email) = lower(n.target)
        ORDER BY u.language IS NULL, u.username LIMIT 1) AS language
FROM notifications n JOIN alerts a USING (episode_id)
WHERE n.sent_at IS NULL AND n.failed_at IS NULL AND n.next_attempt_at <= %(now)s
ORDER BY n.attempts > 0, a.severity <> 'red', n.next_attempt_at
LIMIT 1
FOR UPDATE OF n SKIP LOCKED
"""


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(15 * 2**attempts, 900))


def deliver_due(
    conn: psycopg.Connection[Any],
    channels: Mapping[str, Channel],
    *,
    now: datetime,
    link_base: str,
    limit: int = 50,
    language: str = "en",
) -> tuple[int, int]:
    """Send up to `limit` due notifications, each in its own transaction; (sent, failed attempts).
    Those never tried go first, red before yellow, then the retries: a backlog for a target that is
    down, each try waiting out its timeout, does not hold up a fresh red alert's notification.
    Each is in its recipient's language (a user with that e-mail address who chose one), else in
    `language` (the centre's)."""
    sent = failed = 0
    for _ in range(limit):
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_NEXT, {"now": now})
            row = cur.fetchone()
            if row is None:
                break
            (
                nid,
                episode_id,
                step,
                channel,
                target,
                attempts,
                patient_id,
                severity,
                rule_id,
                received,
                chosen,
            ) = row
            note = Note(
                nid, episode_id, patient_id, severity, rule_id, step, (now - received).total_seconds(),
                f"{link_base.rstrip('/')}/alerts/{episode_id}", chosen or language,
            )  # fmt: skip
            try:
                sender = channels.get(channel)
                if sender is None:
                    raise NotifyError(f"no {channel} channel is configured")
                try:
                    sender.send(target, note)
                except NotifyError:
                    raise
                except Exception as exc:  # a channel's own fault (a malformed URL): this one fails, not all
                    raise NotifyError(f"{channel}: {type(exc).__name__}: {exc}") from exc
            except NotifyError as exc:
                failed += 1
                attempts += 1
                give_up = attempts >= MAX_ATTEMPTS
                cur.execute(
                    "UPDATE notifications SET attempts = %s, last_error = %s, next_attempt_at = %s, "
                    "failed_at = CASE WHEN %s THEN %s END WHERE notification_id = %s",
                    (attempts, str(exc)[:500], now + _backoff(attempts), give_up, now, nid),
                )
                if give_up:
                    _timeline(
                        cur,
                        episode_id,
                        "notify_failed",
                        at=now,
                        step=step,
                        channel=channel,
                        target=target,
                        error=str(exc),
                    )
                log.warning("notification %d (%s, step %d) failed: %s", nid, channel, step, exc)
                continue
            sent += 1
            cur.execute(
                "UPDATE notifications SET attempts = attempts + 1, sent_at = %s, last_error = NULL "
                "WHERE notification_id = %s",
                (now, nid),
            )
            _timeline(
                cur, episode_id, "notified", at=now, step=step, channel=channel, target=target, error=None
            )
    return sent, failed


def _timeline(
    cur: psycopg.Cursor[Any],
    episode_id: str,
    kind: str,
    *,
    at: datetime,
    step: int,
    channel: str,
    target: str,
    error: str | None,
) -> None:
    detail = {"step": step, "to": STEP_NAMES[step], "channel": channel, "target": target}
    if error:
        detail["error"] = error
    cur.execute(
        "INSERT INTO alert_timeline (episode_id, kind, at, detail) VALUES (%s, %s, %s, %s)",
        (episode_id, kind, at, Jsonb(detail)),
    )
