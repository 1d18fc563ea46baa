"""Single sign-on: who a person logging in through the hospital's OpenID provider is in Vaktrom
(docs/single-sign-on.md).

    ClaimRules          where the role and the team are in the provider's claims, and how its
                        role names map to ours (from the settings)
    grant_of()          the claims -> a Grant (role, team), or NoAccessError (pure)
    sign_in()           the account of an identity (issuer + subject), made or brought up to date
                        from the Grant; NoAccessError ends the account's sessions

An identity is its issuer and subject (`sub`), which the provider never reuses; a username or an
e-mail address may change or pass to someone else, so neither links an identity to an account. At
the first login the identity gets an account of its own (never an existing local one: a provider
that lets people choose their username would otherwise hand over a colleague's account). The role
and team come from the claims at every login: a change at the provider takes effect at the next
login (the account's earlier sessions end, as `accounts.change_role` does), and a person without a
recognised role there is refused at the next login and their sessions end.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from alerts import accounts
from alerts.accounts import Role
from alerts.i18n import N_

__all__ = ["ClaimRules", "Grant", "NoAccessError", "claim_at", "grant_of", "parse_role_map", "sign_in"]

_USERNAME_CHARS = re.compile(r"[^a-z0-9._-]+")
# What the no-access page says (English msgids; the page shows them in the console's language).
_NO_ROLE = N_(
    "your account at the hospital's login has no role in Vaktrom; ask your manager to give you one "
    "(nurse, coordinator, physician or administrator)"
)
_TWO_ROLES = N_(
    "your account at the hospital's login has more than one role in Vaktrom (%(roles)s); ask your "
    "manager to leave you one"
)
_TWO_TEAMS = N_(
    "your account at the hospital's login names more than one team; ask your manager to leave you one"
)
_NO_TEAM = N_("your account at the hospital's login names no team; ask your manager to add yours")
_BAD_TEAM = N_("the team your account at the hospital's login names is not a team id; ask an administrator")
_UNKNOWN_TEAM = N_("your team %(team)s is not known in Vaktrom; ask an administrator")
_NO_USERNAME = N_("no free username could be made for you; ask an administrator")
_NO_SUBJECT = N_("the hospital's login sent no identity (sub); ask an administrator")
_DEACTIVATED = N_("your Vaktrom account is deactivated; ask an administrator")


class NoAccessError(Exception):
    """The provider knows the person, but Vaktrom gives them no access; the message says why and
    what to ask for (it is shown to them: `msgid` and `params` for the console's languages)."""

    def __init__(self, msgid: str, **params: str) -> None:
        super().__init__(msgid % params if params else msgid)
        self.msgid, self.params = msgid, params


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimRules:
    """Where to read a person's role and team (dotted claim paths, e.g. `realm_access.roles`)."""

    role_claim: str
    team_claim: str
    role_map: Mapping[str, Role]  # the provider's role name -> ours
    centre_roles: frozenset[Role]  # roles that may come without a team: every team of the centre


@dataclass(frozen=True, slots=True)
class Grant:
    role: Role
    team_id: str | None  # None: every team of the centre


def parse_role_map(raw: str, *, env: str) -> dict[str, Role]:
    """`provider_name=our_role,...`; empty: each of our role names stands for itself."""
    if not raw.strip():
        return {role.value: role for role in Role}
    found: dict[str, Role] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        theirs, _, ours = item.partition("=")
        theirs, ours = theirs.strip(), ours.strip().lower()
        if not theirs or ours not in {r.value for r in Role} or theirs in found:
            raise ValueError(
                f"{env}: {item!r} is not provider_role=ROLE (each provider role once; ROLE one of "
                f"{', '.join(r.value for r in Role)}), e.g. sykepleier=nurse,koordinator=coordinator"
            )
        found[theirs] = Role(ours)
    return found


def claim_at(claims: Mapping[str, Any], path: str) -> Any:
    """The claim at a dotted path (`realm_access.roles`), or None. A claim whose own name holds a dot
    (as some providers' namespaced claims do) is found too."""
    if path in claims:
        return claims[path]
    here: Any = claims
    for part in path.split("."):
        if not isinstance(here, Mapping) or part not in here:
            return None
        here = here[part]
    return here


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [v for v in value if isinstance(v, str)]
    return []


def grant_of(claims: Mapping[str, Any], rules: ClaimRules) -> Grant:
    """The role and team the claims give, or NoAccessError: no recognised role, two different ones
    (Vaktrom does not guess which), or a team-bound role without exactly one team."""
    roles = {
        rules.role_map[name]
        for name in _strings(claim_at(claims, rules.role_claim))
        if name in rules.role_map
    }
    if not roles:
        raise NoAccessError(_NO_ROLE)
    if len(roles) > 1:
        named = ", ".join(sorted(r.value for r in roles))
        raise NoAccessError(_TWO_ROLES, roles=named)
    role = roles.pop()
    raw = claim_at(claims, rules.team_claim)
    given: list[Any] = [] if raw is None else list(raw) if isinstance(raw, list | tuple) else [raw]
    if not all(isinstance(team, str) and team.strip() for team in given):
        # a number, an object, an empty string: never read as "no team" (a centre role would then
        # see every team); the directory sends something else than a team id
        raise NoAccessError(_BAD_TEAM)
    teams = sorted(set(given))
    if len(teams) > 1:
        raise NoAccessError(_TWO_TEAMS)
    if not teams:
        if role in rules.centre_roles:
            return Grant(role, None)
        raise NoAccessError(_NO_TEAM)
    return Grant(role, teams[0])


def _username(conn: psycopg.Connection[Any], claims: Mapping[str, Any], issuer: str, subject: str) -> str:
    """A free username for a new identity: its preferred username (or e-mail's local part) made to
    fit our rules, with a short hash of the identity added when that is taken or unusable."""
    wanted = _strings(claims.get("preferred_username")) or _strings(claims.get("email"))
    base = _USERNAME_CHARS.sub("-", wanted[0].split("@")[0].lower()).strip("-._")[:48] if wanted else ""
    tag = hashlib.sha256(f"{issuer} {subject}".encode()).hexdigest()[:8]
    for candidate in ([base] if len(base) >= 2 else []) + [f"{base or 'sso'}-{tag}"]:
        if conn.execute("SELECT 1 FROM users WHERE username = %s", (candidate,)).fetchone() is None:
            return candidate
    raise NoAccessError(_NO_USERNAME)


def _display_name(claims: Mapping[str, Any], fallback: str) -> str:
    for key in ("name", "preferred_username", "email"):
        found = _strings(claims.get(key))
        if found and found[0].strip():
            return found[0].strip()[:200]
    return fallback


def sign_in(
    conn: psycopg.Connection[Any],
    *,
    issuer: str,
    claims: Mapping[str, Any],
    rules: ClaimRules,
    _retry: bool = False,
) -> str:
    """The username of the identity in `claims` (issuer + `sub`), its account made at the first login
    and its role and team set from the claims. NoAccessError when the claims give no access (the
    linked account's sessions end: access removed at the provider ends here at the next login) or
    when the account is deactivated in Vaktrom. Commits."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise NoAccessError(_NO_SUBJECT)
    row = conn.execute(
        "SELECT i.username, u.role, u.team_id, u.active FROM oidc_identities i "
        "JOIN users u USING (username) WHERE i.issuer = %s AND i.subject = %s",
        (issuer, subject),
    ).fetchone()
    conn.rollback()
    try:
        grant = grant_of(claims, rules)
    except NoAccessError:
        if row is not None:
            with conn.transaction():
                conn.execute("DELETE FROM sessions WHERE username = %s", (row[0],))
        raise
    if row is None:
        try:
            return _link(conn, issuer=issuer, subject=subject, claims=claims, grant=grant)
        except psycopg.errors.UniqueViolation:
            # The same person's first login twice at once (two tabs), or a username taken meanwhile:
            # the other one linked the identity, or the next try picks another name.
            if _retry:
                raise
            return sign_in(conn, issuer=issuer, claims=claims, rules=rules, _retry=True)
    username: str = row[0]
    role, team_id, active = row[1], row[2], row[3]
    if not active:
        raise NoAccessError(_DEACTIVATED)
    if (Role(role), team_id) != (grant.role, grant.team_id):
        try:
            accounts.change_role(conn, username, role=grant.role, team_id=grant.team_id, by="sso")
        except accounts.AccountError:
            raise NoAccessError(_UNKNOWN_TEAM, team=str(grant.team_id)) from None
    with conn.transaction():
        conn.execute(
            "UPDATE users SET display_name = %s WHERE username = %s",
            (_display_name(claims, username), username),
        )
        conn.execute(
            "UPDATE oidc_identities SET last_login_at = now() WHERE issuer = %s AND subject = %s",
            (issuer, subject),
        )
    return username


def _link(
    conn: psycopg.Connection[Any], *, issuer: str, subject: str, claims: Mapping[str, Any], grant: Grant
) -> str:
    email = _strings(claims.get("email"))
    try:
        with conn.transaction():
            username = _username(conn, claims, issuer, subject)
            conn.execute(
                "INSERT INTO users (username, display_name, role, team_id, email, password_hash) "
                "VALUES (%s, %s, %s, %s, %s, NULL)",
                (
                    username,
                    _display_name(claims, username),
                    grant.role.value,
                    grant.team_id,
                    email[0] if email else None,
                ),
            )
            conn.execute(
                "INSERT INTO oidc_identities (issuer, subject, username) VALUES (%s, %s, %s)",
                (issuer, subject, username),
            )
    except psycopg.errors.ForeignKeyViolation:
        raise NoAccessError(_UNKNOWN_TEAM, team=str(grant.team_id)) from None
    return username
