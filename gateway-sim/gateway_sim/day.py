"""One simulated patient's day: which measurements and answers their kit sends, with what values
and faults, drawn from the patient's own random stream for that day (the unit of determinism), and
the ground truth rows of what was injected. `gateway_sim.kits` strings the days into a stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np

from gateway_sim import messages as wire
from gateway_sim import questionnaires as forms
from gateway_sim.cohort import DEVICES
from gateway_sim.cuff import CUFF, CUFF_DAY, SWAPPED_SHARE, cuff_values, pulse_shift
from gateway_sim.messages import Reading
from gateway_sim.physiology import METRIC_ORDER, UNITS, rng_for, true_value

if TYPE_CHECKING:
    from gateway_sim.cohort import Cohort
    from gateway_sim.kits import SimPatient

__all__ = [
    "ANSWERS", "CONTACT", "FAULTS", "SCHEDULE", "SETUP", "SYM3_BELOW", "SYM3_WINDOW", "VALUES",
    "PatientDay", "low_bp_symptomatic", "truth_row",
]  # fmt: skip

# random stream purposes, so adding draws to one never shifts another
SETUP, SCHEDULE, VALUES, FAULTS, ANSWERS = 1, 2, 3, 4, 5
CONTACT = "contact-request"
SYM3_WINDOW, SYM3_BELOW = timedelta(hours=24), 90.0  # the monitor's SYM-3 (docs/clinical-rules.md)


def truth_row(
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


def low_bp_symptomatic(
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
    pair = [t for t in theirs if abs(at - t) <= SYM3_WINDOW]
    if not pair:
        return
    patient.reported.add("low_bp_symptomatic")
    cuff = patient.cuff_episode
    start = min(pair[0], at)
    end = max(cuff.end, at) if cuff is not None else at
    patient.truth.append(
        truth_row(patient, "low_bp_symptomatic", metric="bp_systolic", start=start, end=end, rules=["SYM-3"])
    )


class PatientDay:
    """Draws one patient's readings and faults for one local day; the unit of determinism."""

    def __init__(self, patient: SimPatient, cohort: Cohort, day: date, zone: ZoneInfo) -> None:
        self.patient, self.cohort, self.day, self.zone = patient, cohort, day, zone
        ordinal = day.toordinal()
        self.sched_rng = rng_for(cohort.seed, patient.index, ordinal, SCHEDULE)
        self.value_rng = rng_for(cohort.seed, patient.index, ordinal, VALUES)
        self.fault_rng = rng_for(cohort.seed, patient.index, ordinal, FAULTS)
        self.answer_rng = rng_for(cohort.seed, patient.index, ordinal, ANSWERS)
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
                        truth_row(
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
            found.append((asked.astimezone(UTC), "q:" + CONTACT))
        live = self.patient.live
        if live is not None and self.day == live[0].astimezone(zone).date() and self.strength(live[0]) >= 0.5:
            # a demo: a patient in an episode asks to be contacted as real time begins
            found.append((live[0] + timedelta(seconds=float(rng.uniform(10, 40))), "q:" + CONTACT))
        return found

    def strength(self, at: datetime) -> float:
        episode = self.patient.episode
        return episode.shape(at) if episode is not None else 0.0

    def answer(self, at: datetime, questionnaire: str) -> tuple[tuple[str, str | bool | int], ...]:
        """The items the patient answers, noting in the ground truth what the monitor should find."""
        patient = self.patient
        if questionnaire == CONTACT:
            topic = (
                "symptoms"
                if self.strength(at) >= 0.5
                else str(self.answer_rng.choice(["equipment", "medication", "other"]))
            )
            patient.truth.append(
                truth_row(patient, "contact_request", metric=None, start=at, end=at, rules=["CONTACT-1"])
            )
            return (("topic", topic),)
        episode, cuff = patient.episode, patient.cuff_episode
        answered = forms.answer_check(
            patient.condition, episode.kind if episode else None, self.strength(at), self.answer_rng,
            hypotension=cuff.shape(at) if cuff is not None and cuff.kind == "hypotension" else 0.0,
        )  # fmt: skip
        assert answered is not None  # only a condition with a check schedules one
        if "dizzy" in answered.reported:
            low_bp_symptomatic(patient, dizzy=at)
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
                    truth_row(
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
