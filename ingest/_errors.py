"""The bridge's exceptions.

    BridgeError        the bridge cannot do its job (a service unreachable at start-up); `retriable`
                       says whether starting again later may help
    ConfigError        (runtime.settings) a setting is wrong; fix it and start again

A bad kit payload is never an exception: it becomes a rejection record with a reason code.
"""

from __future__ import annotations

from runtime.stage import StageError

__all__ = ["BridgeError"]


class BridgeError(StageError):
    """The bridge cannot do its job; `retriable` says whether starting again later may help."""
