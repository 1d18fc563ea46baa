"""The kit registry as the bridge sees it: an immutable snapshot, loaded from PostgreSQL and refreshed.

A reading is attributed to the patient whose assignment covers its *measured* time, so a kit handed
on to the next patient never mixes two records, and a reading stored on the kit while it was with
the previous patient still goes to that patient. Nothing is guessed: a kit or device the registry
does not know, a time no assignment covers and a retired kit are reasons to reject.

The tables are the registry's; the bridge reads them through `registry.read` only.
`RegistryCache` keeps the current snapshot: it loads at start, reloads when PostgreSQL sends
`NOTIFY vaktrom_registry` (a trigger on every registry table) and on a timer as a safety net, and
keeps serving the last good snapshot while the database is away.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from contracts import METRICS, Metric, PlausibleRange, RejectReason
from registry import read as registry_read

__all__ = ["Assignment", "KitEntry", "Registry", "RegistryCache", "load_registry"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Assignment:
    patient_id: str
    start: datetime
    end: datetime | None  # None: the patient still has the kit


@dataclass(frozen=True, slots=True)
class KitEntry:
    kit_id: str
    state: str  # in_stock | assigned | retired
    retired_at: datetime | None
    assignments: tuple[Assignment, ...]  # sorted by start, never overlapping (a database constraint)
    devices: Mapping[str, Mapping[Metric, PlausibleRange]]  # device id -> its plausibility ranges
    _starts: tuple[datetime, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", tuple(a.start for a in self.assignments))

    def patient_at(self, moment: datetime) -> str | RejectReason:
        """The patient who had the kit at `moment`, or why nobody can be named."""
        if self.retired_at is not None and moment >= self.retired_at:
            return RejectReason.KIT_RETIRED
        i = bisect.bisect_right(self._starts, moment) - 1
        if i >= 0:
            assignment = self.assignments[i]
            if assignment.end is None or moment < assignment.end:
                return assignment.patient_id
        return RejectReason.KIT_NOT_ASSIGNED

    def had(self, patient_id: str, start: datetime, end: datetime) -> bool:
        """Whether `patient_id` had the kit at some time from `start` to `end` (a retired kit up to
        its retirement)."""
        until = end if self.retired_at is None else min(end, self.retired_at)
        return any(
            a.patient_id == patient_id and a.start <= until and (a.end is None or a.end > start)
            for a in self.assignments
        )

    def current_patient(self) -> str | None:
        """The patient the kit is with now, for the status messages it sends."""
        found = self.patient_at(datetime.now(UTC))
        return None if isinstance(found, RejectReason) else found


@dataclass(frozen=True, slots=True)
class Registry:
    kits: Mapping[str, KitEntry]
    loaded_at: float  # time.monotonic() of the load
    # patient -> the kits they ever had: a command finds its kit without scanning every kit
    _by_patient: Mapping[str, tuple[str, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        by_patient: dict[str, list[str]] = {}
        for kit in self.kits.values():
            for patient in dict.fromkeys(a.patient_id for a in kit.assignments):
                by_patient.setdefault(patient, []).append(kit.kit_id)
        object.__setattr__(self, "_by_patient", {p: tuple(k) for p, k in by_patient.items()})

    def kit(self, kit_id: str) -> KitEntry | None:
        return self.kits.get(kit_id)

    def kit_of(self, patient_id: str, at: datetime) -> str | None:
        """The kit `patient_id` has at `at`, or None (no kit: a command for them is dropped)."""
        for kit_id in self._by_patient.get(patient_id, ()):
            if self.kits[kit_id].patient_at(at) == patient_id:
                return kit_id
        return None


_DEFAULT_RANGES: Mapping[Metric, PlausibleRange] = {m: spec.plausible for m, spec in METRICS.items()}


def _narrowed(profile: Mapping[str, tuple[float, float]]) -> Mapping[Metric, PlausibleRange]:
    """The default plausibility ranges, each narrowed (never widened) by the device profile."""
    if not profile:
        return _DEFAULT_RANGES
    ranges = dict(_DEFAULT_RANGES)
    for metric_code, (low, high) in profile.items():
        try:
            metric = Metric(metric_code)
        except ValueError:
            continue
        default = ranges[metric]
        ranges[metric] = PlausibleRange(max(default.low, low), min(default.high, high))
    return ranges


def load_registry(conn: psycopg.Connection) -> Registry:
    """The whole kit registry in one snapshot, read through the registry's read API."""
    snapshot = registry_read.kit_snapshot(conn)
    profiles: dict[str, dict[str, tuple[float, float]]] = {}
    for profile, metric, low, high in snapshot.profiles:
        profiles.setdefault(profile, {})[metric] = (low, high)
    devices: dict[str, dict[str, Mapping[Metric, PlausibleRange]]] = {}
    for kit_id, device_id, device_profile in snapshot.devices:
        devices.setdefault(kit_id, {})[device_id] = _narrowed(profiles.get(device_profile or "", {}))
    assignments: dict[str, list[Assignment]] = {}
    for kit_id, patient_id, start, end in snapshot.assignments:
        assignments.setdefault(kit_id, []).append(Assignment(patient_id, start, end))
    kits = {
        kit_id: KitEntry(
            kit_id=kit_id,
            state=state,
            retired_at=retired_at,
            assignments=tuple(assignments.get(kit_id, ())),
            devices=devices.get(kit_id, {}),
        )
        for kit_id, state, retired_at in snapshot.kits
    }
    return Registry(kits, time.monotonic())


class RegistryCache:
    """The current registry snapshot, kept fresh by a background thread (LISTEN plus a timer)."""

    def __init__(
        self,
        *,
        database_url: str,
        refresh_interval: float,
        on_load: Callable[[Registry], None] = lambda _r: None,
    ) -> None:
        self._url = database_url
        self._interval = refresh_interval
        self._on_load = on_load
        self._current: Registry | None = None
        self._stop = threading.Event()
        self._loaded = threading.Event()
        self._thread = threading.Thread(target=self._run, name="registry", daemon=True)
        self.last_error = ""

    @property
    def current(self) -> Registry | None:
        return self._current

    def start(self) -> None:
        self._thread.start()

    def wait_loaded(self, timeout: float) -> bool:
        return self._loaded.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {registry_read.CHANGED}")
                    self._serve(conn)
            except psycopg.Error as exc:
                self.last_error = f"{type(exc).__name__}: {exc}".strip()
                log.warning(
                    "registry: cannot read the kit registry (%s); keeping the last snapshot, retry in %.0f s",
                    self.last_error,
                    backoff,
                )
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
            else:
                backoff = 0.5

    def _serve(self, conn: psycopg.Connection) -> None:
        """Load now, then again on every notification (debounced) or when the timer runs out."""
        while not self._stop.is_set():
            registry = load_registry(conn)
            self._current = registry
            self.last_error = ""
            self._loaded.set()
            self._on_load(registry)
            deadline = time.monotonic() + self._interval
            notified = False
            while not self._stop.is_set() and time.monotonic() < deadline and not notified:
                for _ in conn.notifies(timeout=min(1.0, max(0.0, deadline - time.monotonic())), stop_after=1):
                    notified = True
            if notified:  # a bulk enrolment sends many; let them finish before reloading
                for _ in conn.notifies(timeout=0.2):
                    pass
