"""`python -m alerts.admin`: accounts and teams of the response centre, for operators.

    python -m alerts.admin team add oslo-east "Oslo east home follow-up"
    python -m alerts.admin user add kari --name "Kari Nordmann" --role nurse [--team oslo-east]
    python -m alerts.admin user list
    python -m alerts.admin user deactivate kari           # her sessions and tokens end at once
    python -m alerts.admin user activate kari
    python -m alerts.admin user role kari --role coordinator [--team oslo-east]   # sessions end
    python -m alerts.admin token ehr-integration [--days 30]   # prints a bearer token (<= 90 days)
    python -m alerts.admin token ehr-integration --list   # its tokens: id, created, expires, last use
    python -m alerts.admin token ehr-integration --revoke 17

The password of `user add` is read from the terminal (or from stdin when it is not a terminal,
or from VAKTROM_NEW_PASSWORD for scripts). Every change is written to the audit log with the
operator's login name. Reads VAKTROM_DATABASE_URL.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import psycopg

from alerts import accounts
from alerts.accounts import AccountError, Role
from registry import Actor, Registry, RegistryError, read
from runtime.settings import ConfigError, DatabaseSettings

__all__ = ["main"]


def _password() -> str:
    if os.environ.get("VAKTROM_NEW_PASSWORD"):
        return os.environ["VAKTROM_NEW_PASSWORD"]
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise AccountError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m alerts.admin", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    team = sub.add_parser("team", help="teams (a response centre may serve several municipalities)")
    team_add = team.add_subparsers(dest="action", required=True).add_parser("add")
    team_add.add_argument("team_id")
    team_add.add_argument("name")
    user = sub.add_parser("user", help="staff accounts")
    user_sub = user.add_subparsers(dest="action", required=True)
    user_add = user_sub.add_parser("add")
    user_add.add_argument("username")
    user_add.add_argument("--name", required=True, help="full name shown in the console")
    user_add.add_argument("--role", required=True, choices=[r.value for r in Role])
    user_add.add_argument("--team", help="the team they work in (default: every team)")
    user_add.add_argument("--email")
    user_sub.add_parser("list")
    for action, text in (
        ("deactivate", "disable the account; its sessions and tokens stop working at once"),
        ("activate", "enable a disabled account again"),
    ):
        user_sub.add_parser(action, help=text).add_argument("username")
    user_role = user_sub.add_parser("role", help="another role or team; the account's sessions end")
    user_role.add_argument("username")
    user_role.add_argument("--role", required=True, choices=[r.value for r in Role])
    user_role.add_argument("--team", help="the team they work in (default: every team)")
    token = sub.add_parser("token", help="a bearer token for the HTTP API (shown once); list; revoke")
    token.add_argument("username")
    token.add_argument(
        "--days", type=int, default=accounts.MAX_TOKEN_DAYS,
        help=f"lifetime, 1-{accounts.MAX_TOKEN_DAYS} days (default {accounts.MAX_TOKEN_DAYS})",
    )  # fmt: skip
    what = token.add_mutually_exclusive_group()
    what.add_argument("--list", action="store_true", help="list the account's tokens instead")
    what.add_argument("--revoke", type=int, metavar="TOKEN_ID", help="revoke this token instead")
    return parser


def _audit(conn: psycopg.Connection[Any], action: str, target: str, **detail: Any) -> None:
    accounts.audit(
        conn, action, actor=f"cli:{getpass.getuser()}", ip=None, user_agent="alerts.admin", target=target,
        detail=detail,
    )  # fmt: skip


def _team_add(conn: psycopg.Connection[Any], args: argparse.Namespace) -> None:
    """Teams are the registry's: this adds one through `Registry.team_add`, which writes the audit
    entry (`registry.team.add`). A team that exists is refused here, as before (renaming a team or
    adding municipalities is the registry's `team add`)."""
    if any(team_id == args.team_id for team_id, _name in read.teams(conn)):
        raise AccountError(
            f"team {args.team_id!r} exists already (rename it with `python -m registry team add`)"
        )
    conn.rollback()  # end the read's snapshot
    try:
        Registry(sealer=None, broker=None, publisher=None).team_add(
            conn, Actor(f"cli:{getpass.getuser()}"), args.team_id, args.name
        )
    except RegistryError as exc:
        raise AccountError(str(exc)) from None
    print(f"team {args.team_id} added")


def _user_add(conn: psycopg.Connection[Any], args: argparse.Namespace) -> None:
    with conn.transaction():
        accounts.add_user(
            conn, username=args.username, display_name=args.name, role=Role(args.role),
            password=_password(), team_id=args.team, email=args.email,
        )  # fmt: skip
    _audit(conn, "add_user", args.username, role=args.role, team=args.team)
    print(f"user {args.username} ({args.role}) added")


def _user_list(conn: psycopg.Connection[Any], _args: argparse.Namespace) -> None:
    for row in conn.execute(
        "SELECT username, role, coalesce(team_id, 'all teams'), active FROM users ORDER BY username"
    ):
        print(f"{row[0]:24} {row[1]:12} {row[2]:20} {'active' if row[3] else 'disabled'}")


def _user_deactivate(conn: psycopg.Connection[Any], args: argparse.Namespace) -> None:
    ended = accounts.deactivate(conn, args.username, by=f"cli:{getpass.getuser()}")
    _audit(conn, "deactivate_user", args.username, sessions_ended=ended)
    print(f"user {args.username} deactivated ({ended} session(s) and token(s) ended)")


def _user_activate(conn: psycopg.Connection[Any], args: argparse.Namespace) -> None:
    accounts.activate(conn, args.username)
    _audit(conn, "activate_user", args.username)
    print(f"user {args.username} activated")


def _user_role(conn: psycopg.Connection[Any], args: argparse.Namespace) -> None:
    ended = accounts.change_role(
        conn, args.username, role=Role(args.role), team_id=args.team, by=f"cli:{getpass.getuser()}"
    )
    _audit(conn, "change_role", args.username, role=args.role, team=args.team, sessions_ended=ended)
    print(
        f"user {args.username} is now {args.role} of {args.team or 'every team'} ({ended} session(s) ended)"
    )


def _token(conn: psycopg.Connection[Any], args: argparse.Namespace) -> None:
    if args.list:
        for t in accounts.tokens(conn, args.username):
            print(f"{t.token_id:>8}  created {t.created_at:%Y-%m-%d %H:%M}  expires {t.expires_at:%Y-%m-%d}  "
                  f"last used {t.last_seen_at:%Y-%m-%d %H:%M}")  # fmt: skip
        return
    if args.revoke is not None:
        if not accounts.revoke_token(conn, args.username, args.revoke):
            raise AccountError(
                f"{args.username!r} has no API token {args.revoke}; see `token {args.username} --list`"
            )
        _audit(conn, "revoke_token", args.username, token_id=args.revoke)
        print(f"token {args.revoke} of {args.username} revoked")
        return
    if (
        conn.execute("SELECT 1 FROM users WHERE username = %s AND active", (args.username,)).fetchone()
        is None
    ):
        raise AccountError(f"no active user {args.username!r}; add one with `user add` first")
    conn.rollback()
    secret = accounts.new_session(
        conn, args.username, kind="api", lifetime=timedelta(days=args.days), ip=None
    )
    token = accounts.token_of(conn, secret)
    _audit(conn, "add_token", args.username, days=args.days, token_id=token.token_id)
    print(f"token {token.token_id} of {args.username}, until {token.expires_at:%Y-%m-%d}:", file=sys.stderr)
    print(secret)


_COMMANDS = {
    ("team", "add"): _team_add,
    ("user", "add"): _user_add,
    ("user", "list"): _user_list,
    ("user", "deactivate"): _user_deactivate,
    ("user", "activate"): _user_activate,
    ("user", "role"): _user_role,
    ("token", None): _token,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        url = DatabaseSettings.from_env().url
    except ConfigError as exc:
        print(f"alerts.admin: {exc}", file=sys.stderr)
        return 2
    command = _COMMANDS[(args.what, getattr(args, "action", None))]
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            command(conn, args)
    except AccountError as exc:
        print(f"alerts.admin: {exc}", file=sys.stderr)
        return 1
    except psycopg.errors.UniqueViolation:
        print(f"alerts.admin: that {args.what} exists already", file=sys.stderr)
        return 1
    except (psycopg.errors.CheckViolation, psycopg.errors.ForeignKeyViolation) as exc:
        print(f"alerts.admin: not accepted: {exc.diag.message_primary}", file=sys.stderr)
        return 1
    except psycopg.OperationalError as exc:
        print(f"alerts.admin: cannot reach the database: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
