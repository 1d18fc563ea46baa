"""Deadlines that failed for one patient, tried again later (`batch.Processor.deadlines`)."""

from __future__ import annotations

import logging

from prometheus_client import Counter

__all__ = ["FIRST_RETRY_S", "LAST_RETRY_S", "Retries"]

log = logging.getLogger(__name__)

FIRST_RETRY_S = 30.0  # event time to the first retry of a patient's failed deadline
LAST_RETRY_S = 3600.0  # the longest wait between retries: a patient whose engine always fails is tried hourly


class Retries:
    """Patients whose deadline raised in the engine, each with its retries so far.

    A deadline is taken off the timer heap before it is handled; dropped on a failure, it came back
    only with the patient's next record, which a kit gone quiet never sends ("kit silent" lost for
    good). It goes back on the heap instead, later each time (doubling from FIRST_RETRY_S up to
    LAST_RETRY_S of event time), so a patient that always fails costs a try now and then, not the
    whole tick, and the other patients' deadlines go on.
    """

    def __init__(self, failures: Counter) -> None:
        self._failures = failures
        self._tries: dict[bytes, int] = {}  # only the patients failing now

    def failed(self, patient: bytes, clock: float, exc: Exception) -> float:
        """Count and log a failure (no patient id above debug); return when to try again."""
        tries = self._tries[patient] = self._tries.get(patient, 0) + 1
        delay = min(FIRST_RETRY_S * 2.0 ** min(tries - 1, 20), LAST_RETRY_S)
        self._failures.inc()
        # the error's text may quote the patient's values: in the traceback at debug level only
        log.error(
            "a patient's deadline failed in the engine (%s, try %d); trying again in %.0f s of event time",
            type(exc).__name__, tries, delay,
        )  # fmt: skip
        log.debug("the deadline's failure (patient %r)", patient, exc_info=exc)
        return clock + delay

    def done(self, patient: bytes) -> None:
        """The patient's deadline was handled: a later failure starts from the first retry again."""
        if self._tries:
            self._tries.pop(patient, None)

    def __len__(self) -> int:
        return len(self._tries)
