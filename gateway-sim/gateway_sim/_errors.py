"""The simulator's exceptions.

SimulatorError            anything that stops a run; the message says what to do
├── CohortError           a cohort file or count that cannot be used
└── BrokerError           the broker cannot be reached or refuses the kit's credentials
"""

from __future__ import annotations

__all__ = ["BrokerError", "CohortError", "SimulatorError"]


class SimulatorError(Exception):
    """A run cannot start or continue; the message is meant for the person running it."""


class CohortError(SimulatorError):
    """The cohort description is wrong: the message names the key and what a valid value looks like."""


class BrokerError(SimulatorError):
    """The MQTT broker is unreachable or refused the connection."""

    def __init__(self, message: str, *, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable  # refused credentials will not get better by retrying
