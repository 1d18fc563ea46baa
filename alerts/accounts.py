"""Staff accounts and sessions of the response centre (tables from migration 0006), and its entries
in the audit log (the kernel's `runtime.audit`).

Passwords are hashed with Argon2id (argon2-cffi's defaults, the RFC 9106 second recommendation).
A session is a random 256-bit secret in a cookie (browser) or a bearer token (API); the database
keeps only its SHA-256, so the table alone does not let anyone in. Failed logins are counted per
account and per address; past the limit the login is refused without checking the password. Each
attempt is counted before its password is checked, under a lock per account and per address, so
concurrent attempts cannot slip past the limit together.

An account's lifecycle: `deactivate` (every session and token ends at once), `activate`,
`change_role` (the account's sessions and tokens end: they carried the old rights), and API tokens
listed and revoked one by one by their `token_id`. Tokens last at most `MAX_TOKEN_DAYS`.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import argon2
import psycopg

from alerts import handoff
from alerts.i18n import LANGUAGES
from registry import expire_codes_made_by
from runtime import audit as audit_log

__all__ = [
    "MAX_TOKEN_DAYS",
    "AccountError",
    "LoginError",
    "Principal",
    "Role",
    "Token",
    "activate",
    "add_user",
    "address_block",
    "audit",
    "authenticate",
    "change_role",
    "deactivate",
    "end_session",
    "new_session",
    "purge",
    "revoke_token",
    "session_for",
    "session_live",
    "set_language",
    "token_of",
    "tokens",
    "users",
]

_hasher = argon2.PasswordHasher()
# Verifying against this when the user does not exist takes as long as a real check, so the
# response time does not tell which usernames exist.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_IP = 30
FAILURE_WINDOW = timedelta(minutes=15)
MIN_PASSWORD = 12
MAX_TOKEN_DAYS = 90
# Advisory-lock namespaces of the login limiter (pg_advisory_xact_lock(namespace, hashtext(key))).
_LOCK_USER, _LOCK_IP = 0x766B_0001, 0x766B_0002


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
    language: str | None = None  # 'nb' or 'en' as chosen (migration 0022); None: not chosen


@dataclass(frozen=True, slots=True)
class Token:
    """An API bearer token as it may be shown: its id and times, never its secret."""

    token_id: int
    username: str
    created_at: datetime
    expires_at: datetime
    last_seen_at: datetime


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


def address_block(ip: str | None) -> tuple[str | None, str | None]:
    """A client's address as recorded, and the block its failed logins are counted by: the IPv4
    address itself, or the IPv6 /64 around it, since one host usually holds a whole /64 and could
    otherwise take a fresh address for every guess. An IPv4 client seen through an IPv6 socket
    (::ffff:a.b.c.d) is its IPv4 address. Something that is no address is counted by account only."""
    if ip is None:
        return None, None
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None, None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv6Address):
        address = ipaddress.IPv6Address(int(address))  # without a zone (%eth0), which inet refuses
        return str(address), str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address), f"{address}/32"


def authenticate(conn: psycopg.Connection[Any], username: str, password: str, ip: str | None) -> str:
    """The username when the password is right; LoginError otherwise. Records failures and commits."""
    with conn.transaction():
        # Count and record this attempt in one step, one attempt at a time per account and per
        # address (the account's lock first, always): a burst of concurrent guesses is admitted only
        # up to the limit. The attempt's row is removed again when the password is right.
        ip, block = address_block(ip)
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_USER, username))
        conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_LOCK_IP, block or ""))
        admitted = conn.execute(
            """
            INSERT INTO login_failures (username, ip)
            SELECT %(u)s, %(ip)s
            WHERE (SELECT count(*) FROM login_failures
                   WHERE username = %(u)s AND at > now() - %(window)s) < %(per_user)s
              AND (%(block)s::cidr IS NULL OR (SELECT count(*) FROM login_failures
                   WHERE ip <<= %(block)s::cidr AND at > now() - %(window)s) < %(per_ip)s)
            RETURNING 1
            """,
            {"u": username, "ip": ip, "block": block, "window": FAILURE_WINDOW,
             "per_user": MAX_FAILURES_PER_USER, "per_ip": MAX_FAILURES_PER_IP},
        ).fetchone()  # fmt: skip
        if admitted is None:
            raise LoginError(
                "too many failed logins: wait 15 minutes or ask an administrator",
                retry_after_s=int(FAILURE_WINDOW.total_seconds()),
            )
        row = conn.execute(
            "SELECT password_hash FROM users WHERE username = %s AND active", (username,)
        ).fetchone()
    # An account of the single sign-on has no password (NULL): checked against the dummy, it fails
    # as an unknown user does, in the same time.
    stored = row[0] if row is not None else None
    try:
        _hasher.verify(stored or _DUMMY_HASH, password)
        if stored is None:
            raise argon2.exceptions.VerifyMismatchError
    except (argon2.exceptions.VerifyMismatchError, argon2.exceptions.InvalidHashError):
        raise LoginError("wrong username or password") from None  # its attempt stays counted
    with conn.transaction():
        conn.execute("DELETE FROM login_failures WHERE username = %s", (username,))
        if _hasher.check_needs_rehash(stored):
            conn.execute(
                "UPDATE users SET password_hash = %s WHERE username = %s", (_hasher.hash(password), username)
            )
    return username


def new_session(
    conn: psycopg.Connection[Any],
    username: str,
    *,
    kind: str,
    lifetime: timedelta,
    ip: str | None,
    id_token: str | None = None,
) -> str:
    """Start a session and return its secret (the cookie value or bearer token). Commits.
    An API token lasts at most MAX_TOKEN_DAYS (AccountError beyond). `id_token`: the OpenID
    provider's ID token of a single-sign-on login, handed back to it at logout."""
    if kind == "api" and not timedelta(0) < lifetime <= timedelta(days=MAX_TOKEN_DAYS):
        raise AccountError(f"a token lasts between 1 and {MAX_TOKEN_DAYS} days; ask for fewer days")
    token = secrets.token_urlsafe(32)
    with conn.transaction():
        if (
            kind == "api"
            and conn.execute("SELECT 1 FROM oidc_identities WHERE username = %s", (username,)).fetchone()
        ):
            # its access ends when the hospital's login removes the person, at their next login: a
            # token lives on without logins (up to MAX_TOKEN_DAYS) and would outlast that
            raise AccountError(
                f"{username} logs in through the hospital's login, so it gets no API token (one would "
                "outlast the person's removal there); give an integration a local account of its own"
            )
        conn.execute(
            "INSERT INTO sessions (token_hash, username, kind, csrf_token, expires_at, ip, id_token) "
            "VALUES (%s, %s, %s, %s, now() + %s, %s, %s)",
            (_digest(token), username, kind, secrets.token_urlsafe(32), lifetime, ip, id_token),
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
            RETURNING u.username, u.display_name, u.role, u.team_id, s.csrf_token, u.language
            """,
            {"h": _digest(token), "kind": kind, "idle": idle},
        ).fetchone()
    if row is None:
        return None
    return Principal(row[0], row[1], Role(row[2]), row[3], row[4], kind, row[5])


def session_live(conn: psycopg.Connection[Any], token: str, *, kind: str, idle: timedelta) -> bool:
    """Whether the session is still live, as `session_for` would judge it, without counting this as a
    use (an open event stream must not keep an idle session alive)."""
    row = conn.execute(
        """
        SELECT 1 FROM sessions s JOIN users u ON u.username = s.username AND u.active
        WHERE s.token_hash = %(h)s AND s.kind = %(kind)s
          AND s.expires_at > now() AND s.last_seen_at > now() - %(idle)s
        """,
        {"h": _digest(token), "kind": kind, "idle": idle},
    ).fetchone()
    conn.rollback()
    return row is not None


def set_language(conn: psycopg.Connection[Any], username: str, language: str | None) -> None:
    """Store the user's console language ('nb', 'en', or None to follow the browser). Commits."""
    if language is not None and language not in LANGUAGES:
        raise AccountError(f"language must be one of {', '.join(LANGUAGES)}")
    with conn.transaction():
        conn.execute("UPDATE users SET language = %s WHERE username = %s", (language, username))


def purge(conn: psycopg.Connection[Any], *, keep: timedelta = timedelta(days=1)) -> tuple[int, int]:
    """Forget sessions that ended more than `keep` ago and failed logins older than that (both hold
    a user's address); the audit log keeps the record of who did what. Returns (sessions, failures)
    removed. Commits."""
    with conn.transaction():
        sessions = conn.execute("DELETE FROM sessions WHERE expires_at < now() - %s", (keep,)).rowcount
        failures = conn.execute("DELETE FROM login_failures WHERE at < now() - %s", (keep,)).rowcount
    return sessions, failures


def end_session(conn: psycopg.Connection[Any], token: str) -> str | None:
    """End one session now. Returns its ID token when it was a single-sign-on login (for the
    provider's logout), else None. Commits."""
    with conn.transaction():
        row = conn.execute(
            "DELETE FROM sessions WHERE token_hash = %s RETURNING id_token", (_digest(token),)
        ).fetchone()
    return row[0] if row is not None else None


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
    """Append one entry to the audit log (`runtime.audit`, the kernel's). Commits (an action's entry
    must not wait for a later one)."""
    with conn.transaction():
        audit_log.append(
            conn, action, actor=actor, ip=ip, user_agent=user_agent or "", target=target,
            patient_id=patient_id, detail=detail,
        )  # fmt: skip


# ------------------------------------------------------------------ an account's lifecycle
def _exists(conn: psycopg.Connection[Any], username: str) -> None:
    if conn.execute("SELECT 1 FROM users WHERE username = %s", (username,)).fetchone() is None:
        raise AccountError(f"there is no user {username!r}")


def deactivate(conn: psycopg.Connection[Any], username: str, *, by: str | None = None) -> int:
    """Disable an account: its sessions and tokens end now, and so do the unclaimed kit pairing codes
    it made (the person who leaves has seen them, and a code claimed hands over a kit's broker
    credentials; the centre makes new ones). The alerts it holds go back to the queue (`by` is who
    did it, for their timeline): nobody can act on them under its name any more. Returns how many
    sessions ended. Commits."""
    with conn.transaction():
        _exists(conn, username)
        conn.execute("UPDATE users SET active = false WHERE username = %s", (username,))
        expire_codes_made_by(conn, username)  # the registry's pairing codes, in this transaction
        with conn.cursor() as cur:
            handoff.release_unseen(cur, username, by=by, why=f"{username} was deactivated")
        return conn.execute("DELETE FROM sessions WHERE username = %s", (username,)).rowcount


def activate(conn: psycopg.Connection[Any], username: str) -> None:
    """Enable a disabled account again: it logs in afresh. Any session or token still on record is
    removed, not revived: one made by a request that checked the account just before it was
    deactivated would otherwise come back to life. Commits."""
    with conn.transaction():
        _exists(conn, username)
        if conn.execute(
            "UPDATE users SET active = true WHERE username = %s AND NOT active", (username,)
        ).rowcount:
            conn.execute("DELETE FROM sessions WHERE username = %s", (username,))


def change_role(
    conn: psycopg.Connection[Any], username: str, *, role: Role, team_id: str | None, by: str | None = None
) -> int:
    """Give an account another role and team (None: every team). Its sessions and tokens end, since
    they carried the old rights, and the alerts it holds of a team it no longer sees go back to the
    queue (`by` is who did it, for their timeline). Returns how many sessions ended. Commits."""
    try:
        with conn.transaction():
            _exists(conn, username)
            conn.execute(
                "UPDATE users SET role = %s, team_id = %s WHERE username = %s",
                (role.value, team_id, username),
            )
            with conn.cursor() as cur:
                handoff.release_unseen(cur, username, by=by, why=f"{username} moved to another team or role")
            return conn.execute("DELETE FROM sessions WHERE username = %s", (username,)).rowcount
    except psycopg.errors.ForeignKeyViolation:
        raise AccountError(f"there is no team {team_id!r}") from None


def users(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every account (no password hashes), by username."""
    rows = conn.execute(
        "SELECT username, display_name, role, team_id, active, created_at FROM users ORDER BY username"
    ).fetchall()
    conn.rollback()
    keys = ("username", "display_name", "role", "team_id", "active", "created_at")
    return [dict(zip(keys, row, strict=True)) for row in rows]


def tokens(conn: psycopg.Connection[Any], username: str) -> list[Token]:
    """The account's API tokens that have not expired, newest first."""
    rows = conn.execute(
        "SELECT token_id, username, created_at, expires_at, last_seen_at FROM sessions "
        "WHERE username = %s AND kind = 'api' AND expires_at > now() ORDER BY token_id DESC",
        (username,),
    ).fetchall()
    conn.rollback()
    return [Token(*row) for row in rows]


def token_of(conn: psycopg.Connection[Any], secret: str) -> Token:
    """The token a secret from `new_session(kind="api")` is (to show its id)."""
    row = conn.execute(
        "SELECT token_id, username, created_at, expires_at, last_seen_at FROM sessions "
        "WHERE token_hash = %s AND kind = 'api'",
        (_digest(secret),),
    ).fetchone()
    conn.rollback()
    if row is None:
        raise AccountError("no such token")
    return Token(*row)


def revoke_token(conn: psycopg.Connection[Any], username: str, token_id: int) -> bool:
    """End one API token of `username` now; False when it has no such token. Commits."""
    with conn.transaction():
        return bool(
            conn.execute(
                "DELETE FROM sessions WHERE token_id = %s AND username = %s AND kind = 'api'",
                (token_id, username),
            ).rowcount
        )
