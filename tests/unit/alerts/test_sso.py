"""Single sign-on's pure parts: the claims -> role and team, the settings checked at start-up, and
the content security policy that lets the logout reach the provider."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts.accounts import Role
from alerts.console.security import CONTENT_SECURITY_POLICY, SecurityHeaders, form_action_origin
from alerts.settings import AlertsSettings
from alerts.sso import ClaimRules, Grant, NoAccessError, claim_at, grant_of, parse_role_map
from runtime.settings import ConfigError

RULES = ClaimRules(
    role_claim="realm_access.roles",
    team_claim="team",
    role_map={"sykepleier": Role.NURSE, "koordinator": Role.COORDINATOR, "it": Role.ADMIN},
    centre_roles=frozenset({Role.ADMIN}),
)
OIDC = {
    "VAKTROM_OIDC_ISSUER": "https://login.hospital.example/realms/staff",
    "VAKTROM_OIDC_CLIENT_ID": "vaktrom",
    "VAKTROM_OIDC_CLIENT_SECRET": "s3cret-of-the-client-made-by-the-provider",
}


def _claims(roles: Any, team: Any = None) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": "abc", "realm_access": {"roles": roles}}
    if team is not None:
        claims["team"] = team
    return claims


def test_a_mapped_role_and_one_team_give_that_role_in_that_team() -> None:
    """The provider's role name maps to ours; unknown roles beside it are ignored."""
    grant = grant_of(_claims(["offline_access", "sykepleier"], "team-a"), RULES)
    assert grant == Grant(Role.NURSE, "team-a")


def test_a_team_as_a_one_item_list_counts_as_that_team() -> None:
    """Some providers send every attribute as a list."""
    assert grant_of(_claims("koordinator", ["team-b"]), RULES) == Grant(Role.COORDINATOR, "team-b")


@pytest.mark.parametrize("roles", [[], ["offline_access"], None, 42, {"sykepleier": True}, ["Sykepleier"]])
def test_no_recognised_role_is_no_access(roles: Any) -> None:
    """No role, only unknown ones, a claim of the wrong type, or another spelling: no access."""
    with pytest.raises(NoAccessError, match="no role in Vaktrom"):
        grant_of(_claims(roles, "team-a"), RULES)


def test_two_different_roles_are_refused_not_guessed() -> None:
    """Vaktrom does not choose between two of its roles."""
    with pytest.raises(NoAccessError, match="more than one role"):
        grant_of(_claims(["sykepleier", "koordinator"], "team-a"), RULES)


def test_a_team_bound_role_without_a_team_gets_no_access() -> None:
    """A nurse whose team is missing at the provider must not see every team."""
    with pytest.raises(NoAccessError, match="names no team"):
        grant_of(_claims(["sykepleier"]), RULES)


def test_two_teams_are_refused() -> None:
    with pytest.raises(NoAccessError, match="more than one team"):
        grant_of(_claims(["sykepleier"], ["team-a", "team-b"]), RULES)


def test_a_centre_role_without_a_team_sees_every_team() -> None:
    assert grant_of(_claims(["it"]), RULES) == Grant(Role.ADMIN, None)


def test_claim_paths_are_dotted_and_a_dotted_claim_name_is_found_too() -> None:
    """`realm_access.roles` walks into objects; a namespaced claim whose name has dots is read as is."""
    assert claim_at({"a": {"b": 1}}, "a.b") == 1
    assert claim_at({"https://hospital.example/roles": ["x"]}, "https://hospital.example/roles") == ["x"]
    assert claim_at({"a": [1]}, "a.b") is None


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_any_claim_values_give_a_grant_or_no_access_never_a_crash(value: Any) -> None:
    """Hostile or odd claims: a Grant or NoAccessError, nothing else."""
    for claims in (
        {"realm_access": {"roles": value}, "team": value},
        {"realm_access": value},
        {"team": value},
    ):
        with contextlib.suppress(NoAccessError):
            grant_of(claims, RULES)


def test_the_role_map_names_our_roles_only() -> None:
    assert parse_role_map("", env="X") == {r.value: r for r in Role}
    assert parse_role_map(" a = Nurse , b=admin", env="X") == {"a": Role.NURSE, "b": Role.ADMIN}
    for bad in ("a=superuser", "a", "=nurse", "a=nurse,a=admin"):
        with pytest.raises(ValueError, match="X"):
            parse_role_map(bad, env="X")


@pytest.mark.parametrize("missing", ["VAKTROM_OIDC_CLIENT_ID", "VAKTROM_OIDC_CLIENT_SECRET"])
def test_an_issuer_without_client_id_or_secret_fails_at_start(missing: str) -> None:
    env = {k: v for k, v in OIDC.items() if k != missing}
    with pytest.raises(ConfigError, match="VAKTROM_OIDC_CLIENT_ID or VAKTROM_OIDC_CLIENT_SECRET"):
        AlertsSettings.from_env(env)


@pytest.mark.parametrize(
    ("issuer", "ok"),
    [("https://login.hospital.example/realms/staff", True), ("http://127.0.0.1:8080/realms/x", True),
     ("http://localhost:8080/realms/x", True), ("http://login.hospital.example/realms/x", False),
     ("login.hospital.example", False), ("ftp://login.hospital.example", False)],
)  # fmt: skip
def test_the_issuer_is_https_except_on_localhost(issuer: str, ok: bool) -> None:
    env = OIDC | {"VAKTROM_OIDC_ISSUER": issuer}
    if ok:
        assert AlertsSettings.from_env(env).oidc_issuer == issuer
    else:
        with pytest.raises(ConfigError, match="VAKTROM_OIDC_ISSUER"):
            AlertsSettings.from_env(env)


@pytest.mark.parametrize(
    ("env", "named"),
    [({"VAKTROM_OIDC_ROLE_MAP": "sykepleier=superuser"}, "VAKTROM_OIDC_ROLE_MAP"),
     ({"VAKTROM_OIDC_CENTRE_ROLES": "nurse,boss"}, "VAKTROM_OIDC_CENTRE_ROLES")],
)  # fmt: skip
def test_a_bad_role_setting_fails_at_start_naming_it(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        AlertsSettings.from_env(OIDC | env)


def test_without_an_issuer_there_is_no_single_sign_on() -> None:
    settings = AlertsSettings.from_env({})
    assert settings.claim_rules is None
    assert form_action_origin(settings.oidc_issuer) is None


def test_the_policy_lets_forms_lead_to_the_provider_only_when_one_is_configured() -> None:
    """The logout's redirect to the provider's end-session endpoint is a form's redirect: its origin
    joins `form-action`, nothing else changes."""
    origin = form_action_origin("https://login.hospital.example:8443/realms/staff")
    assert origin == "https://login.hospital.example:8443"
    with_provider = SecurityHeaders(lambda *_: None, form_action=origin).always[0][1].decode()  # type: ignore[arg-type,return-value]
    assert with_provider == CONTENT_SECURITY_POLICY.replace(
        "form-action 'self'", "form-action 'self' https://login.hospital.example:8443"
    )
    assert SecurityHeaders(lambda *_: None).always[0][1].decode() == CONTENT_SECURITY_POLICY  # type: ignore[arg-type,return-value]
