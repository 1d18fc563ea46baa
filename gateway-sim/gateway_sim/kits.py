"""Simulated patients and their kits: what each kit publishes, and when, in simulated time.

`CohortStream` turns a `Cohort` into one time-ordered stream of (release time, message) for the
whole cohort, generated day by day so a real-time run can go on for as long as it likes. Each
patient's day is drawn from its own random stream (seed, patient, day, purpose), so the output for a
seed does not depend on the run's length or on the order patients are asked in.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import numpy as np

from gateway_sim import messages as wire
from gateway_sim import questionnaires as forms
from gateway_sim.cohort import DEVICES, Cohort, Schedule
from gateway_sim.cuff import (
    CUFF,
    CUFF_DAY,
    CUFF_SETUP,
    EPISODE_SHARE,
    SWAPPED_SHARE,
    CuffBaseline,
    cuff_values,
    draw_cuff_baseline,
    plan_cuff_episode,
    pulse_shift,
)
from gateway_sim.messages import Message, Reading
from gateway_sim.physiology import (
    METRIC_ORDER,
    UNITS,
    Baseline,
    Episode,
    draw_baseline,
    plan_episode,
    rng_for,
    true_value,
)

__all__ = ["CohortStream", "SimPatient", "build_patients", "load_enrolment"]

# random stream purposes, so adding draws to one never shifts another
_SETUP, _SCHEDULE, _VALUES, _FAULTS, _ANSWERS = 1, 2, 3, 4, 5
_CONTACT = "contact-request"
_DEVICE_CODE = {
    "scale": "SC", "oximeter": "OX", "thermometer": "TH", "glucose_meter": "GM", "cgm": "CG", CUFF: "BP",
}  # fmt: skip
_HEARTBEAT = timedelta(hours=6)
_SYM3_WINDOW, _SYM3_BELOW = timedelta(hours=24), 90.0  # the monitor's SYM-3 (docs/clinical-rules.md)


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
            rng = rng_for(cohort.seed, n, 0, _SETUP)
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
                    _truth(
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
                    _truth(
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
        _truth(
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


def _truth(
    patient: SimPatient,
    kind: str,
    *,
    metric: str | None,
    start: datetime,
    end: datetime,
    rules: list[str],
    **extra: object,
) -> dict[str, object]:
    row: dict[str, object] = {
        "patient_id": patient.patient_id,
        "kit": patient.kit,
        "condition": patient.condition,
        "kind": kind,
        "metric": metric,
        "start": wire.iso(start.astimezone(UTC)),
        "end": wire.iso(end.astimezone(UTC)),
        "expected_rules": rules,
    }
    for key, value in extra.items():
        row[key] = wire.iso(value.astimezone(UTC)) if isinstance(value, datetime) else value
    return row


_RESOLUTION = {"body_weight": 1, "spo2": 0, "pulse": 0, "body_temperature": 1, "glucose": 1}


def _low_bp_symptomatic(
    patient: SimPatient, *, dizzy: datetime | None = None, low: datetime | None = None
) -> None:
    """Note a dizzy answer or a sent systolic reading under 90 mm[Hg]; the first pair within 24 h of
    each other (SYM-3's window, in the kit's own clock, the same skew on both) is the patient's
    `low_bp_symptomatic` ground truth, found by SYM-3 if the monitor sees it during the episode."""
    if "low_bp_symptomatic" in patient.reported:
        return  # one per patient: a patient has one cuff episode at most
    if dizzy is not None:
        at, theirs = dizzy, patient.low_systolic
        patient.dizzy.append(at)
    else:
        assert low is not None
        at, theirs = low, patient.dizzy
        patient.low_systolic.append(at)
    pair = [t for t in theirs if abs(at - t) <= _SYM3_WINDOW]
    if not pair:
        return
    patient.reported.add("low_bp_symptomatic")
    cuff = patient.cuff_episode
    start = min(pair[0], at)
    end = max(cuff.end, at) if cuff is not None else at
    patient.truth.append(
        _truth(patient, "low_bp_symptomatic", metric="bp_systolic", start=start, end=end, rules=["SYM-3"])
    )


class _PatientDay:
    """Draws one patient's readings and faults for one local day; the unit of determinism."""

    def __init__(self, patient: SimPatient, cohort: Cohort, day: date, zone: ZoneInfo) -> None:
        self.patient, self.cohort, self.day, self.zone = patient, cohort, day, zone
        ordinal = day.toordinal()
        self.sched_rng = rng_for(cohort.seed, patient.index, ordinal, _SCHEDULE)
        self.value_rng = rng_for(cohort.seed, patient.index, ordinal, _VALUES)
        self.fault_rng = rng_for(cohort.seed, patient.index, ordinal, _FAULTS)
        self.answer_rng = rng_for(cohort.seed, patient.index, ordinal, _ANSWERS)
        self.day_noise = dict(
            zip(METRIC_ORDER, self.value_rng.standard_normal(len(METRIC_ORDER)), strict=True)
        )
        # the cuff's own streams (gateway_sim.cuff): schedule, values and faults
        self.cuff_rng = rng_for(cohort.seed, patient.index, ordinal, CUFF_DAY)
        self.cuff_day_noise = (float(self.cuff_rng.standard_normal()), float(self.cuff_rng.standard_normal()))

    def sessions(self, start: datetime, end: datetime) -> list[tuple[datetime, str]]:
        """(true UTC time, device kind) of each measurement the patient takes this day, with skips.

        A skipped measurement goes into the ground truth when its whole window lies in [start, end)
        and the kit is not silent by then (a silent kit is its own episode).
        """
        midnight = datetime.combine(self.day, time(0), self.zone)
        tomorrow = midnight + timedelta(days=1)
        live_from, live_every = self.patient.live or (tomorrow, None)
        found: list[tuple[datetime, str]] = []
        for kind, (_serial, schedule) in sorted(self.patient.devices.items()):
            if schedule.every is not None:
                found.extend((t.astimezone(UTC), kind) for t in _ticks(midnight, tomorrow, schedule.every))
                continue
            if live_every is not None:
                found.extend(
                    (t.astimezone(UTC), kind) for t in _ticks(live_from, tomorrow, live_every, midnight)
                )
            rng = self.cuff_rng if kind == CUFF else self.sched_rng  # the others' draws stay put
            for a, b in schedule.windows:
                lo = datetime.combine(self.day, a, self.zone)
                hi = datetime.combine(self.day, b, self.zone)
                at = lo + (hi - lo) * float(rng.random())
                skipped = rng.random() < self.cohort.faults.skip
                if at >= live_from:
                    continue  # the live interval has taken over
                silent = self.patient.silent_from is not None and hi >= self.patient.silent_from
                if skipped and start <= lo and hi <= min(end, live_from) and not silent:
                    self.patient.truth.append(
                        _truth(
                            self.patient,
                            "measurement_missed",
                            metric=DEVICES[kind].metrics[0],
                            start=lo,
                            end=hi,
                            rules=["measurement-missed"],
                            device=kind,
                        )
                    )
                if skipped:
                    continue
                found.append((at.astimezone(UTC), kind))
        found.sort()
        return found

    def questionnaires(self) -> list[tuple[datetime, str]]:
        """(true UTC time, "q:" + questionnaire) of the day's check and any contact request."""
        rng, zone, found = self.answer_rng, self.zone, []
        lo, hi = (datetime.combine(self.day, t, zone) for t in forms.CHECK_WINDOW)
        at = lo + (hi - lo) * float(rng.random())
        skipped = rng.random() < self.cohort.faults.skip
        if self.patient.condition in forms.CHECK_OF and not skipped:
            found.append((at.astimezone(UTC), "q:" + forms.CHECK_OF[self.patient.condition]))
        morning = datetime.combine(self.day, time(8), zone)
        asked = morning + timedelta(hours=12 * float(rng.random()))  # some time between 08 and 20
        if rng.random() < forms.contact_chance(self.strength(asked)):
            found.append((asked.astimezone(UTC), "q:" + _CONTACT))
        live = self.patient.live
        if live is not None and self.day == live[0].astimezone(zone).date() and self.strength(live[0]) >= 0.5:
            # a demo: a patient in an episode asks to be contacted as real time begins
            found.append((live[0] + timedelta(seconds=float(rng.uniform(10, 40))), "q:" + _CONTACT))
        return found

    def strength(self, at: datetime) -> float:
        episode = self.patient.episode
        return episode.shape(at) if episode is not None else 0.0

    def answer(self, at: datetime, questionnaire: str) -> tuple[tuple[str, str | bool | int], ...]:
        """The items the patient answers, noting in the ground truth what the monitor should find."""
        patient = self.patient
        if questionnaire == _CONTACT:
            topic = (
                "symptoms"
                if self.strength(at) >= 0.5
                else str(self.answer_rng.choice(["equipment", "medication", "other"]))
            )
            patient.truth.append(
                _truth(patient, "contact_request", metric=None, start=at, end=at, rules=["CONTACT-1"])
            )
            return (("topic", topic),)
        episode, cuff = patient.episode, patient.cuff_episode
        answered = forms.answer_check(
            patient.condition, episode.kind if episode else None, self.strength(at), self.answer_rng,
            hypotension=cuff.shape(at) if cuff is not None and cuff.kind == "hypotension" else 0.0,
        )  # fmt: skip
        assert answered is not None  # only a condition with a check schedules one
        if "dizzy" in answered.reported:
            _low_bp_symptomatic(patient, dizzy=at)
        kind = {"fluid_gain": "hf_symptoms", "copd_exacerbation": "copd_symptoms"}.get(
            episode.kind if episode else ""
        )
        wanted = {
            "hf_symptoms": ("SYM-2", {"breathless", "swelling", "orthopnoea"}),
            "copd_symptoms": ("SYM-1", {"breathless"}),
        }
        if episode is not None and kind is not None and kind not in patient.reported:
            rule, signs = wanted[kind]
            if signs.intersection(answered.reported) and self.strength(at) >= 0.5:
                patient.reported.add(kind)
                patient.truth.append(
                    _truth(
                        patient,
                        kind,
                        metric=None,
                        start=at,
                        end=episode.end,
                        rules=[rule],
                        symptoms=list(answered.reported),
                    )
                )
        return answered.items

    def readings(self, at: datetime, kind: str) -> tuple[Reading, ...]:
        serial = self.patient.devices[kind][0]
        local = at.astimezone(self.zone)
        hour = local.hour + local.minute / 60.0
        kit_time = wire.iso((at + self.patient.skew).astimezone(self.zone))
        faults = self.cohort.faults
        if kind == CUFF:
            return (self._cuff_reading(serial, at, hour, kit_time),)
        out = []
        for metric in DEVICES[kind].metrics:
            value = true_value(
                metric,
                self.patient.baseline,
                local_hour=hour,
                day_noise=float(self.day_noise[metric]),
                technique_noise=float(self.value_rng.standard_normal()),
                episode=self.patient.episode,
                at=at,
            )
            reading = _device_reading(serial, metric, value, kit_time)
            roll = float(self.fault_rng.random())
            if roll < faults.wrong_unit:
                reading = _wrong_unit(reading, self.fault_rng)
            elif roll < faults.wrong_unit + faults.implausible:
                reading = Reading(serial, metric, _IMPLAUSIBLE, UNITS[metric], kit_time, label="implausible")
            out.append(reading)
        return tuple(out)

    def _cuff_reading(self, serial: str, at: datetime, hour: float, kit_time: str) -> Reading:
        """One cuff measurement: systolic, diastolic and pulse in one reading (whole mmHg and /min)."""
        patient, rng = self.patient, self.cuff_rng
        assert patient.cuff is not None  # a kit with a cuff has its pressures drawn
        systolic, diastolic = cuff_values(
            patient.cuff, local_hour=hour, day_noise=self.cuff_day_noise,
            technique_noise=(float(rng.standard_normal()), float(rng.standard_normal())),
            episode=patient.cuff_episode, at=at,
        )  # fmt: skip
        pulse = true_value(
            "pulse", patient.baseline, local_hour=hour, day_noise=float(self.day_noise["pulse"]),
            technique_noise=float(rng.standard_normal()), episode=patient.episode, at=at,
        ) + pulse_shift(patient.cuff_episode, at)  # fmt: skip
        sys_v, dia_v, label = float(round(systolic)), float(round(diastolic)), None
        if rng.random() < SWAPPED_SHARE:  # the pressures swapped: the bridge refuses it as inconsistent
            sys_v, dia_v, label = dia_v, sys_v, "swapped"
        return Reading(
            serial, "blood_pressure", None, "mm[Hg]", kit_time, label=label,
            systolic=sys_v, diastolic=dia_v, pulse=float(round(pulse)),
        )  # fmt: skip


def _ticks(
    begin: datetime, end: datetime, every: timedelta, floor: datetime | None = None
) -> Iterator[datetime]:
    """begin, begin + every, ... before end; none before `floor` (for a live interval begun days ago)."""
    t = begin
    if floor is not None and t < floor:
        t += every * math.ceil((floor - t) / every)
    while t < end:
        yield t
        t += every


_IMPLAUSIBLE = 0.0  # what a sensor that failed to read reports: SpO2 0 %, weight 0 kg


def _device_reading(serial: str, metric: str, value: float, measured_at: str) -> Reading:
    if metric == "spo2":
        value = min(100.0, value)
    if metric == "glucose" and value > 33.3:  # beyond the meter's range it shows HI (GL-4), not a number
        return Reading(serial, metric, None, UNITS[metric], measured_at, flag="HI")
    if metric == "glucose" and value < 0.6:
        return Reading(serial, metric, None, UNITS[metric], measured_at, flag="LO")
    digits = _RESOLUTION[metric]
    return Reading(
        serial, metric, round(value, digits) if digits else float(round(value)), UNITS[metric], measured_at
    )


def _wrong_unit(reading: Reading, rng: np.random.Generator) -> Reading:
    """A unit mistake real kits make. Only the mislabelled one is plainly wrong; the others are correctly
    labelled non-canonical units that the bridge must convert (they are labelled so the ledger shows them)."""
    value = reading.value
    if value is None:
        return reading
    if reading.metric == "body_temperature":  # degF value labelled as Cel: implausible, rejected with a hint
        return Reading(
            reading.device,
            reading.metric,
            round(value * 9 / 5 + 32, 1),
            "Cel",
            reading.measured_at,
            label="wrong_unit",
        )
    if reading.metric == "body_weight":  # pounds, correctly labelled
        unit = "lb" if rng.random() < 0.5 else "[lb_av]"
        return Reading(
            reading.device,
            reading.metric,
            round(value / 0.45359237, 1),
            unit,
            reading.measured_at,
            label="wrong_unit",
        )
    if reading.metric == "glucose":  # mg/dL, correctly labelled
        return Reading(
            reading.device,
            reading.metric,
            float(round(value * 18.016)),
            "mg/dL",
            reading.measured_at,
            label="wrong_unit",
        )
    if reading.metric == "pulse":  # a unit no one accepts
        return Reading(reading.device, reading.metric, value, "Hz", reading.measured_at, label="wrong_unit")
    return Reading(reading.device, reading.metric, value, "permille", reading.measured_at, label="wrong_unit")


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
        pd = _PatientDay(self.patient, self.cohort, day, zone)
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

    def _answers(self, pd: _PatientDay, at: datetime, questionnaire: str, release: datetime) -> None:
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

    def _reading(self, pd: _PatientDay, at: datetime, kind: str, release: datetime) -> None:
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
        if cuff is not None and cuff.label is None and (cuff.systolic or _SYM3_BELOW) < _SYM3_BELOW:
            _low_bp_symptomatic(patient, low=at)
        if message.label is None:  # a kit resends what it sent, not what it garbled
            self.recent = [*self.recent[-19:], message]
