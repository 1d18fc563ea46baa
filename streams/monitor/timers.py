"""A partition's deadline timer: when to look at each patient next, one entry per patient.

A patient's next deadline (`PatientRecord.wake_at`) moves on with nearly every message (the "kit
silent" deadline is a day after the latest one). The timer keeps only the EARLIEST time asked for
each patient: a later one is not pushed, since the earlier entry wakes the patient anyway and the
batch then asks again for the record's current `wake_at`. A heap that took every time asked grew by
an entry on every record write, none of them due for a day (a leak of ~12 MB per 5 minutes at
2,000 readings/s, most of the monitor's memory growth in the soak).

Entries superseded by an earlier time stay in the heap until they come up and are skipped, so the
heap holds at most one live entry per patient plus those moved earlier since.
"""

from __future__ import annotations

import heapq

__all__ = ["Timer"]


class Timer:
    def __init__(self, entries: dict[bytes, float] | None = None) -> None:
        self._due: dict[bytes, float] = dict(entries or {})  # patient -> the time its live entry has
        self._heap = [(wake, patient) for patient, wake in self._due.items()]
        heapq.heapify(self._heap)

    def __len__(self) -> int:
        """Patients waiting for a deadline."""
        return len(self._due)

    def ask(self, patient: bytes, wake: float | None) -> None:
        """Wake `patient` at `wake` at the latest (None: nothing asked)."""
        if wake is None:
            return
        held = self._due.get(patient)
        if held is not None and held <= wake:
            return
        self._due[patient] = wake
        heapq.heappush(self._heap, (wake, patient))

    def due(self, now: float) -> bool:
        """Whether a patient is due by `now` (superseded entries on top are dropped)."""
        heap, due = self._heap, self._due
        while heap and heap[0][0] <= now:
            wake, patient = heap[0]
            if due.get(patient) == wake:
                return True
            heapq.heappop(heap)
        return False

    def pop(self, now: float) -> tuple[float, bytes] | None:
        """The next patient due by `now`, with the time it was asked for, taken off the timer; None
        when nobody is due."""
        if not self.due(now):
            return None
        wake, patient = heapq.heappop(self._heap)
        del self._due[patient]
        return wake, patient

    @property
    def entries(self) -> int:
        """Heap entries, superseded ones included (bounded: see the module's doc)."""
        return len(self._heap)
