"""Staff accounts, sessions and the audit log of the response centre (tables from migration 0006).

Passwords are hashed with Argon2id (argon2-cffi's defaults, the RFC 9106 second recommendation).
A session is a random 256-bit secret in a cookie (browser) or a bearer token (API); the database
keeps only its SHA-256, so the table alone does not let anyone in. Failed logins are counted per
account and per address; past the limit the login is refused without checking the password.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import argon2
import psycopg
from psycopg.types.json import Jsonb

__all__ = [
    "AccountError",
    "LoginError",
    "Principal",
    "Role",
    "add_user",
    "audit",
    "authenticate",
    "end_session",
    "new_session",
    "purge",
    "session_for",
]

_hasher = argon2.PasswordHasher()
# Verifying against this when the user does not exist takes as long as a real check, so the
# response time does not tell which usernames exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_IP = 30
FAILURE_WINDOW = timedelta(minutes=15)
MIN_PASSWORD = 12


class Role(enum.StrEnum):
    NURSE = "nurse"
    COORDINATOR = "coordinator"
    PHYSICIAN = "physician"
    ADMIN = "admin"

    @property
    def clinical(self) -> bool:
        """Sees patients and works the queue (an admin manages accounts and reads the audit log)."""
        return self is not Role.ADMIN


class AccountError(ValueError):
    """Bad account data; the message says what to change."""


class LoginError(Exception):
    """Wrong username or password, or too many attempts (`retry_after_s` set)."""

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking, as the session says."""

    username: str
    display_name: str
    role: Role
    team_id: str | None  # None: every team of the centre
    csrf_token: str
    kind: str  # 'browser' or 'api'


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def add_user(
    conn: psycopg.Connection[Any],
    *,
    username: str,
    display_name: str,
    role: Role,
    password: str,
    team_id: str | None = None,
    email: str | None = None,
) -> None:
    """Create an account (the caller commits)."""
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"a password needs at least {MIN_PASSWORD} characters")
    try:
        conn.execute(
            "INSERT INTO users (username, display_name, role, team_id, email, password_hash) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            (username, display_name, role.value, team_id, email, _hasher.hash(password)),
        )
    except psycopg.errors.UniqueViolation:
        raise AccountError(f"the username {username!r} is taken") from None
    except psycopg.errors.CheckViolation:
        raise AccountError(
            "a username is 2-64 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
        ) from None
    except psycopg.errors.ForeignKeyViolation:
        raise AccountError(f"there is no team {team_id!r}") from None


def authenticate(conn: psycopg.Connection[Any], username: str, password: str, ip: str | None) -> str:
    """The username when the password is right; LoginError otherwise. Records failures and commits."""
    with conn.transaction():
        per_user, per_ip = conn.execute(
            "SELECT count(*) FILTER (WHERE username = %(u)s), count(*) FILTER (WHERE ip = %(ip)s) "
            "FROM login_failures WHERE at > now() - %(window)s AND (username = %(u)s OR ip = %(ip)s)",
            {"u": username, "ip": ip, "window": FAILURE_WINDOW},
        ).fetchone() or (0, 0)
        if per_user >= MAX_FAILURES_PER_USER or per_ip >= MAX_FAILURES_PER_IP:
            raise LoginError(
                "too many failed logins: wait 15 minutes or ask an administrator",
                retry_after_s=int(FAILURE_WINDOW.total_seconds()),
            )
        row = conn.execute(
            "SELECT password_hash FROM users WHERE username = %s AND active", (username,)
        ).fetchone()
    try:
        _hasher.verify(row[0] if row else _DUMMY_HASH, password)
        if row is None:
            raise argon2.exceptions.VerifyMismatchError
    except (argon2.exceptions.VerifyMismatchError, argon2.exceptions.InvalidHashError):
        with conn.transaction():
            conn.execute("INSERT INTO login_failures (username, ip) VALUES (%s, %s)", (username, ip))
        raise LoginError("wrong username or password") from None
    with conn.transaction():
        conn.execute("DELETE FROM login_failures WHERE username = %s", (username,))
        if _hasher.check_needs_rehash(row[0]):
            conn.execute(
                "UPDATE users SET password_hash = %s WHERE username = %s", (_hasher.hash(password), username)
            )
    return username


def new_session(
    conn: psycopg.Connection[Any], username: str, *, kind: str, lifetime: timedelta, ip: str | None
) -> str:
    """Start a session and return its secret (the cookie value or bearer token). Commits."""
    token = secrets.token_urlsafe(32)
    with conn.transaction():
        conn.execute(
            "INSERT INTO sessions (token_hash, username, kind, csrf_token, expires_at, ip) "
            "VALUES (%s, %s, %s, %s, now() + %s, %s)",
            (_digest(token), username, kind, secrets.token_urlsafe(32), lifetime, ip),
        )
    return token


def session_for(conn: psycopg.Connection[Any], token: str, *, kind: str, idle: timedelta) -> Principal | None:
    """The principal of a live session, or None (unknown, expired, idle too long, user disabled).
    Each use moves `last_seen_at`, which the idle limit counts from. Commits."""
    with conn.transaction():
        row = conn.execute(
            """
            UPDATE sessions s SET last_seen_at = now()
            FROM users u
            WHERE s.token_hash = %(h)s AND s.kind = %(kind)s AND u.username = s.username AND u.active
              AND s.expires_at > now() AND s.last_seen_at > now() - %(idle)s
            RETURNING u.username, u.display_name, u.role, u.team_id, s.csrf_token
            """,
            {"h": _digest(token), "kind": kind, "idle": idle},
        ).fetchone()
    if row is None:
        return None
    return Principal(row[0], row[1], Role(row[2]), row[3], row[4], kind)


def purge(conn: psycopg.Connection[Any], *, keep: timedelta = timedelta(days=1)) -> tuple[int, int]:
    """Forget sessions that ended more than `keep` ago and failed logins older than that (both hold
    a user's address); the audit log keeps the record of who did what. Returns (sessions, failures)
    removed. Commits."""
    with conn.transaction():
        sessions = conn.execute("DELETE FROM sessions WHERE expires_at < now() - %s", (keep,)).rowcount
        failures = conn.execute("DELETE FROM login_failures WHERE at < now() - %s", (keep,)).rowcount
    return sessions, failures


def end_session(conn: psycopg.Connection[Any], token: str) -> None:
    with conn.transaction():
        conn.execute("DELETE FROM sessions WHERE token_hash = %s", (_digest(token),))


def audit(
    conn: psycopg.Connection[Any],
    action: str,
    *,
    actor: str | None,
    ip: str | None,
    user_agent: str | None,
    target: str | None = None,
    patient_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append one entry to the audit log. Commits (an action's entry must not wait for a later one)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO audit_log (actor, action, target, patient_id, ip, user_agent, detail) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (actor, action, target, patient_id, ip, (user_agent or "")[:300], Jsonb(detail or {})),
        )
