"""Whose objects an actor of the registry reaches (docs/access-control.md)."""

from __future__ import annotations

import pytest

from registry import Actor

TEAM_BOUND = Actor("coordinator-a", team_id="a")
CENTRE_WIDE = Actor("admin")
COMMAND_LINE = Actor("cli:ops", every_team=False)


@pytest.mark.parametrize(
    ("actor", "team", "reached"),
    [
        (TEAM_BOUND, "a", True),
        (TEAM_BOUND, "b", False),
        (TEAM_BOUND, None, True),  # the centre-wide stock
        (CENTRE_WIDE, "a", True),
        (CENTRE_WIDE, "b", True),
        (CENTRE_WIDE, None, True),
        (COMMAND_LINE, "a", False),
        (COMMAND_LINE, None, True),
    ],
)
def test_an_actor_reaches_its_team_and_the_centre(actor: Actor, team: str | None, reached: bool) -> None:
    """A team-bound actor reaches its team and the centre-wide stock; a centre-wide account every
    team; the command line without a scope the centre-wide objects only."""
    assert actor.reaches(team) is reached


def test_out_of_scope_reads_as_missing_and_the_command_line_says_how_to_reach_it() -> None:
    """Another team's object is refused in the words used for one that does not exist; the command
    line adds what to pass to reach a team's objects."""
    assert TEAM_BOUND.unknown("kit 'K'") == "no kit 'K'"
    assert "--as-team TEAM" in COMMAND_LINE.unknown("kit 'K'")
