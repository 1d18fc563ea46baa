"""Escalation routes as configured (alerts/workers/notify.py `parse_routes`): webhooks, e-mail
addresses and duty roles (issue #32)."""

from __future__ import annotations

import pytest

from alerts.workers.notify import Route, parse_routes


def test_roles_mix_with_webhooks_and_addresses() -> None:
    """`role:on_call_physician` is a role route beside an https:// webhook and a mailto: address."""
    routes = parse_routes(
        "https://pager.example.org/hook, role:on_call_physician, mailto:lege@centre.example.org", env="X"
    )
    assert routes == [
        Route("webhook", "https://pager.example.org/hook"),
        Route("role", "on_call_physician"),
        Route("email", "lege@centre.example.org"),
    ]


@pytest.mark.parametrize("item", ["role:doctor", "role:", "role:Coordinator", "coordinator", "tel:113"])
def test_an_unknown_role_or_route_names_the_setting_and_the_roles(item: str) -> None:
    """A role that is not one of the three, or something that is no route, fails at start-up with
    the variable's name and the roles there are."""
    with pytest.raises(ValueError, match=r"VAKTROM_ALERTS_NOTIFY_PHYSICIAN: .*role:on_call_physician"):
        parse_routes(item, env="VAKTROM_ALERTS_NOTIFY_PHYSICIAN")
