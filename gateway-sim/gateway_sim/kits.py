"""Simulated patients and their kits: what each kit publishes, and when, in simulated time.

`CohortStream` turns a `Cohort` into one time-ordered stream of (release time, message) for the
whole cohort, generated day by day so a real-time run can go on for as long as it likes. Each
patient's day is drawn from its own random stream (seed, patient, day, purpose), so the output for a
seed does not depend on the run's length or on the order patients are asked in.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from gateway_sim import messages as wire
from gateway_sim import questionnaires as forms
from gateway_sim.cohort import DEVICES, Cohort, Schedule
from gateway_sim.cuff import (
    CUFF,
    CUFF_SETUP,
    EPISODE_SHARE,
    CuffBaseline,
    draw_cuff_baseline,
    plan_cuff_episode,
)
from gateway_sim.day import (
    SETUP,
    SYM3_BELOW,
    PatientDay,
    low_bp_symptomatic,
    truth_row,
)
from gateway_sim.messages import Message
from gateway_sim.physiology import (
    Baseline,
    Episode,
    draw_baseline,
    plan_episode,
    rng_for,
)

__all__ = ["CohortStream", "SimPatient", "build_patients", "load_enrolment"]

_DEVICE_CODE = {
    "scale": "SC", "oximeter": "OX", "thermometer": "TH", "glucose_meter": "GM", "cgm": "CG", CUFF: "BP",
}  # fmt: skip
_HEARTBEAT = timedelta(hours=6)


@dataclass(slots=True)
class SimPatient:
    index: int
    patient_id: str
    kit: str
    condition: str
    devices: dict[str, tuple[str, Schedule]]  # kind -> (device serial, schedule)
    baseline: Baseline
    episode: Episode | None
    skew: timedelta  # the kit's clock minus true time
    silent_from: datetime | None
    live: tuple[datetime, timedelta] | None = None  # from then on, windowed devices measure this often
    seq: int = 0
    truth: list[dict[str, object]] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)  # ground-truth kinds of symptoms already reported
    cuff: CuffBaseline | None = None  # the patient's own blood pressure, when the kit has a cuff
    cuff_episode: Episode | None = None  # a blood-pressure episode (gateway_sim.cuff)
    # sent systolic readings under SYM-3's 90 mm[Hg] and dizzy answers: the pairs the monitor can see
    low_systolic: list[datetime] = field(default_factory=list)
    dizzy: list[datetime] = field(default_factory=list)

    def enrolment(self, zone: str) -> dict[str, object]:
        """What the registry needs to enrol this patient and kit (issue #8 imports it)."""
        expected = []
        for kind, (_serial, schedule) in self.devices.items():
            for metric in DEVICES[kind].metrics:
                item: dict[str, object] = {"metric": metric}
                if schedule.every is not None:
                    item["every_minutes"] = max(1, int(schedule.every.total_seconds() // 60))
                else:
                    item["windows"] = [
                        {"start": a.strftime("%H:%M"), "end": b.strftime("%H:%M")}
                        for a, b in schedule.windows
                    ]
                expected.append(item)
        return {
            "patient_id": self.patient_id,
            "kit": self.kit,
            "condition": self.condition,
            "timezone": zone,
            "spo2_scale": 2 if self.baseline.low_spo2_target and self.condition == "copd" else 1,
            "devices": [
                {"serial": serial, "kind": kind, "model": DEVICES[kind].model}
                for kind, (serial, _s) in self.devices.items()
            ],
            "expected": expected,
            "questionnaires": [
                {"questionnaire": q, "windows": [{"start": "09:00", "end": "11:00"}]}
                for q in ([forms.CHECK_OF[self.condition]] if self.condition in forms.CHECK_OF else [])
            ],
        }


def build_patients(
    cohort: Cohort,
    *,
    run_start: datetime,
    run_days: float,
    episodes_at: datetime | None = None,
    live: tuple[datetime, timedelta] | None = None,
) -> list[SimPatient]:
    """Every patient of the cohort with kit, baseline, episode, clock skew and silence drawn from the seed.

    `episodes_at` puts every episode at its peak at that moment (see `plan_episode`); `live` =
    (from, every) replaces the daily windows by a fixed interval from then on. Both are for demos:
    something to see within minutes instead of days.
    """
    patients = []
    counter = itertools.count(1)
    faults = cohort.faults
    for condition in sorted(cohort.patients):
        plan = cohort.plans[condition]
        for _ in range(cohort.patients[condition]):
            n = next(counter)
            rng = rng_for(cohort.seed, n, 0, SETUP)
            kit = f"{cohort.kit_prefix}-{n:06d}"
            devices = dict(plan.devices)
            if condition == "diabetes" and "glucose_meter" in devices and rng.random() < cohort.cgm_share:
                del devices["glucose_meter"]
                devices["cgm"] = Schedule(every=cohort.cgm_every)
            baseline = draw_baseline(condition, rng)
            episode = None
            if rng.random() < plan.episode_share:
                episode = plan_episode(
                    condition, rng, run_start=run_start, run_days=run_days, peak_at=episodes_at
                )
            skew = timedelta(0)
            if rng.random() < faults.clock_skew:
                skew = timedelta(minutes=float(rng.uniform(-1, 1)) * faults.clock_skew_minutes)
            silent_from = None
            if rng.random() < faults.silent:
                silent_from = run_start + timedelta(days=float(rng.uniform(0.3, 0.8)) * run_days)
            patient = SimPatient(
                index=n,
                patient_id=f"{cohort.kit_prefix}P{n:06d}",
                kit=kit,
                condition=condition,
                devices={kind: (f"{kit}-{_DEVICE_CODE[kind]}", s) for kind, s in devices.items()},
                baseline=baseline,
                episode=episode,
                skew=skew,
                silent_from=silent_from,
                live=live,
            )
            if episode is not None:
                patient.truth.append(
                    truth_row(
                        patient,
                        episode.kind,
                        metric=episode.metric,
                        start=episode.start,
                        end=episode.end,
                        rules=list(episode.expected_rules),
                        magnitude=episode.magnitude,
                        unit=episode.unit,
                        peak=episode.peak,
                    )
                )
            if CUFF in devices:
                share = EPISODE_SHARE * plan.episode_share
                _give_cuff(
                    patient, cohort.seed, share, run_start=run_start, run_days=run_days, peak_at=episodes_at
                )
            if silent_from is not None:
                end = run_start + timedelta(days=run_days)
                patient.truth.append(
                    truth_row(
                        patient, "kit_silent", metric=None, start=silent_from, end=end, rules=["kit-silent"]
                    )
                )
            patients.append(patient)
    return patients


def _give_cuff(
    patient: SimPatient,
    seed: int,
    share: float,
    *,
    run_start: datetime,
    run_days: float,
    peak_at: datetime | None,
) -> None:
    """The cuff patient's own pressures and, for some, a BP episode with its ground truth; drawn from
    a stream of its own, so the rest of the patient is what it was before kits had cuffs."""
    rng = rng_for(seed, patient.index, 0, CUFF_SETUP)
    patient.cuff = draw_cuff_baseline(patient.condition, rng)
    if rng.random() >= share:
        return
    episode = plan_cuff_episode(
        patient.condition, patient.cuff, rng, run_start=run_start, run_days=run_days,
        until=patient.silent_from, peak_at=peak_at,
    )  # fmt: skip
    if episode is None:
        return
    patient.cuff_episode = episode
    patient.truth.append(
        truth_row(
            patient, episode.kind, metric=episode.metric, start=episode.start, end=episode.end,
            rules=list(episode.expected_rules), magnitude=episode.magnitude, unit=episode.unit,
            peak=episode.peak,
        )
    )  # fmt: skip


def load_enrolment(kit_prefix: str, count: int) -> list[dict[str, object]]:
    """The synthetic load kits as enrolment records: kit PREFIX-000001 with oximeter PREFIX-000001-OX,
    for patient PREFIXP000001 (the registry imports it like a cohort's)."""
    rows: list[dict[str, object]] = []
    for i in range(1, count + 1):
        kit = f"{kit_prefix}-{i:06d}"
        rows.append(
            {
                "patient_id": f"{kit_prefix}P{i:06d}",
                "kit": kit,
                "condition": "load",
                "devices": [{"serial": f"{kit}-OX", "kind": "oximeter", "model": "VS-Oxi-10"}],
                "expected": [],
            }
        )
    return rows


class CohortStream:
    """Every message of a cohort, in release order, over simulated time [start, end)."""

    def __init__(self, cohort: Cohort, patients: list[SimPatient], *, start: datetime, end: datetime) -> None:
        self.cohort, self.patients, self.start, self.end = cohort, patients, start, end
        self.zone = cohort.zone

    def __iter__(self) -> Iterator[tuple[datetime, Message]]:
        streams = [self._patient_stream(p) for p in self.patients]
        # ties broken by patient index, then the order each patient produced them in
        return (
            (at, message)
            for at, _idx, _n, message in heapq.merge(*streams, key=lambda item: (item[0], item[1], item[2]))
        )

    def _patient_stream(self, patient: SimPatient) -> Iterator[tuple[datetime, int, int, Message]]:
        timeline = _KitTimeline(patient, self.cohort, self.start, self.end)
        day = self.start.astimezone(self.zone).date()
        last_day = self.end.astimezone(self.zone).date()
        while day <= last_day:
            day_end = timeline.add_day(day)
            for release, n, message in timeline.pop_until(day_end):
                yield min(release, self.end), patient.index, n, message
            day += timedelta(days=1)
        for release, n, message in timeline.pop_until(None):
            yield min(release, self.end), patient.index, n, message


class _KitTimeline:
    """One kit's messages with their release times, after offline periods, holds and resends."""

    def __init__(self, patient: SimPatient, cohort: Cohort, start: datetime, end: datetime) -> None:
        self.patient, self.cohort, self.start, self.end = patient, cohort, start, end
        self.faults = cohort.faults
        self.pending: list[tuple[datetime, int, Message]] = []  # heap of (release, order, message)
        self.order = itertools.count()
        self.recent: list[Message] = []  # candidates for a duplicate resend
        self.held: Message | None = None  # out of order: released right after the kit's next message
        self.next_beat = start

    def _push(self, release: datetime, message: Message) -> None:
        heapq.heappush(self.pending, (release, next(self.order), message))

    def pop_until(self, limit: datetime | None) -> Iterator[tuple[datetime, int, Message]]:
        if limit is None and self.held is not None:
            self._push(self.end - timedelta(seconds=1), self.held)
            self.held = None
        while self.pending and (limit is None or self.pending[0][0] < limit):
            yield heapq.heappop(self.pending)

    def add_day(self, day: date) -> datetime:
        """Draw one local day of the kit's life; returns the day's end (UTC)."""
        zone = self.cohort.zone
        pd = PatientDay(self.patient, self.cohort, day, zone)
        day_start = datetime.combine(day, time(0), zone).astimezone(UTC)
        day_end = datetime.combine(day + timedelta(days=1), time(0), zone).astimezone(UTC)
        offline: tuple[datetime, datetime] | None = None
        if pd.fault_rng.random() < self.faults.offline:
            hours = float(pd.fault_rng.uniform(*self.faults.offline_hours))
            begin = day_start + timedelta(hours=float(pd.fault_rng.uniform(0, 24)))
            offline = (begin, begin + timedelta(hours=hours))
        events: list[tuple[datetime, str | None]] = list(pd.sessions(self.start, self.end))
        events.extend(pd.questionnaires())
        while self.next_beat < day_end:
            events.append((self.next_beat, None))  # None: a heartbeat status message
            self.next_beat += _HEARTBEAT
        events.sort(key=lambda e: (e[0], e[1] or ""))
        silent_from = self.patient.silent_from
        for at, kind in events:
            if not (self.start <= at < self.end) or (silent_from is not None and at >= silent_from):
                continue
            release = at
            if offline is not None and offline[0] <= at < offline[1]:
                if kind is None:
                    continue  # an offline kit sends no heartbeat; its readings wait (store and forward)
                release = offline[1] + timedelta(seconds=float(pd.fault_rng.uniform(1, 120)))
            if kind is None:
                self._push(release, self._heartbeat(at, release))
            elif kind.startswith("q:"):
                self._answers(pd, at, kind[2:], release)
            else:
                self._reading(pd, at, kind, release)
        return day_end

    def _heartbeat(self, at: datetime, release: datetime) -> Message:
        battery = 100.0 - ((at - self.start) / timedelta(days=30)) % 1 * 80
        kit_clock = (release + self.patient.skew).astimezone(self.cohort.zone)
        payload = wire.status_payload(self.patient.kit, "heartbeat", kit_clock, battery=battery)
        return Message(self.patient.kit, -1, "status", payload)

    def _answers(self, pd: PatientDay, at: datetime, questionnaire: str, release: datetime) -> None:
        """One completed questionnaire, published on the kit's `answers` channel (receipts as readings)."""
        patient = self.patient
        patient.seq += 1
        zone = self.cohort.zone
        authored = wire.iso((at + patient.skew).astimezone(zone))
        items = pd.answer(at, questionnaire)
        rid = f"{patient.kit}-{questionnaire}-{at.astimezone(UTC):%Y%m%dT%H%M%S}"
        body = forms.response(rid, questionnaire, authored, items)
        kit_clock = (release + patient.skew).astimezone(zone)
        payload = forms.answers_payload(patient.kit, patient.seq, kit_clock, [body])
        self._push(release, Message(patient.kit, patient.seq, "answers", payload))

    def _reading(self, pd: PatientDay, at: datetime, kind: str, release: datetime) -> None:
        patient, faults = self.patient, self.faults
        rng = pd.cuff_rng if kind == CUFF else pd.fault_rng  # the others' fault draws stay put
        patient.seq += 1
        readings = pd.readings(at, kind)
        kit_clock = (release + patient.skew).astimezone(self.cohort.zone)
        payload = wire.readings_payload(patient.kit, patient.seq, kit_clock, readings)
        message = Message(patient.kit, patient.seq, "readings", payload, readings)
        roll = float(rng.random())
        if roll < faults.malformed:
            message.payload, message.label = wire.malformed(payload, float(rng.random())), "malformed"
        elif roll < faults.malformed + faults.oversized:
            message.payload, message.label = wire.oversized(payload), "oversized"
        if self.held is not None:
            self._push(release, message)
            self._push(release + timedelta(seconds=1), self.held)
            self.held = None
        elif rng.random() < faults.out_of_order:
            message.out_of_order = True
            self.held = message
        else:
            self._push(release, message)
        if message.label is None and rng.random() < faults.duplicate and self.recent:
            old = self.recent[int(rng.integers(len(self.recent)))]
            copy = Message(old.kit, old.seq, "readings", old.payload, old.readings, label="duplicate")
            self._push(release + timedelta(minutes=float(rng.uniform(1, 120))), copy)
        cuff = readings[0] if kind == CUFF and message.label is None else None  # one the bridge takes
        if cuff is not None and cuff.label is None and (cuff.systolic or SYM3_BELOW) < SYM3_BELOW:
            low_bp_symptomatic(patient, low=at)
        if message.label is None:  # a kit resends what it sent, not what it garbled
            self.recent = [*self.recent[-19:], message]
