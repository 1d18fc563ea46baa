"""A cohort: how many patients of each condition, which devices their kits have, and when they measure.

A cohort comes from a TOML file (`gateway-sim example-cohort` prints a commented one) or from
command-line counts; both give the same `Cohort`. Everything random about it is drawn later from
`seed`, so one cohort and one seed always give the same kits, readings and episodes.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway_sim._errors import CohortError
from gateway_sim.faults import Faults

__all__ = [
    "CONDITIONS",
    "DEVICES",
    "Cohort",
    "ConditionPlan",
    "DeviceKind",
    "Schedule",
    "default_plans",
    "load_cohort",
    "parse_counts",
]

CONDITIONS = ("heart_failure", "copd", "diabetes", "infection")


@dataclass(frozen=True, slots=True)
class DeviceKind:
    """A kind of measuring device and the metrics one measurement session produces."""

    name: str
    model: str
    metrics: tuple[str, ...]


DEVICES: dict[str, DeviceKind] = {
    d.name: d
    for d in (
        DeviceKind("scale", "VS-Scale-200", ("body_weight",)),
        DeviceKind("oximeter", "VS-Oxi-10", ("spo2", "pulse")),
        DeviceKind("thermometer", "VS-Temp-3", ("body_temperature",)),
        DeviceKind("glucose_meter", "VS-Gluco-5", ("glucose",)),
        DeviceKind("cgm", "VS-CGM-14", ("glucose",)),  # continuous monitor: a reading every few minutes
        # blood-pressure cuff: one reading carries systolic, diastolic and pulse; a care plan expects
        # it by its systolic pressure (gateway_sim.cuff)
        DeviceKind("bp_cuff", "VS-BP-7", ("bp_systolic",)),
    )
}

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")
_EVERY = re.compile(r"^\s*every\s+(\d+)\s*(s|m|min|h)\s*$")


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a device is used: once at a random time in each daily window, or at a fixed interval."""

    windows: tuple[tuple[time, time], ...] = ()
    every: timedelta | None = None

    @classmethod
    def parse(cls, spec: str | list[str], *, where: str) -> Schedule:
        """`["07:00-10:00", "18:00-21:00"]` or `"every 5m"` (s, m or h)."""
        if isinstance(spec, str):
            if match := _EVERY.match(spec):
                amount, unit = int(match[1]), match[2]
                seconds = amount * {"s": 1, "m": 60, "min": 60, "h": 3600}[unit]
                if seconds < 1:
                    raise CohortError(f"{where}: the interval in {spec!r} must be at least 1 s")
                return cls(every=timedelta(seconds=seconds))
            spec = [spec]
        windows = []
        for item in spec:
            match = _WINDOW.match(str(item))
            if not match:
                raise CohortError(
                    f"{where}: {item!r} is not a daily window like '07:00-10:00' "
                    "or an interval like 'every 5m'"
                )
            h1, m1, h2, m2 = (int(g) for g in match.groups())
            if not (h1 < 24 and h2 < 24 and m1 < 60 and m2 < 60) or (h1, m1) >= (h2, m2):
                raise CohortError(f"{where}: window {item!r} must run forwards within one day (00:00-23:59)")
            windows.append((time(h1, m1), time(h2, m2)))
        if not windows:
            raise CohortError(f"{where}: give at least one window, e.g. ['07:00-10:00']")
        return cls(windows=tuple(windows))


@dataclass(frozen=True, slots=True)
class ConditionPlan:
    """The kit and measurement routine patients of one condition get."""

    devices: Mapping[str, Schedule]
    episode_share: float = 0.5  # share of these patients who get one injected episode


def default_plans() -> dict[str, ConditionPlan]:
    """Routines modelled on Norwegian home follow-up programmes (weight every morning, etc.)."""
    morning, evening = (time(8), time(10)), (time(18), time(21))
    cuff = Schedule(windows=((time(7), time(9)), (time(18), time(21))))  # home BP: morning and evening
    return {
        "heart_failure": ConditionPlan(
            {
                "scale": Schedule(windows=((time(7), time(10)),)),
                "oximeter": Schedule(windows=(morning, evening)),
                "bp_cuff": cuff,
            }
        ),
        "copd": ConditionPlan(
            {
                "oximeter": Schedule(windows=(morning, evening)),
                "thermometer": Schedule(windows=(morning,)),
                "bp_cuff": cuff,
            }
        ),
        "diabetes": ConditionPlan(
            {
                "glucose_meter": Schedule(
                    windows=(
                        (time(7), time(8)),
                        (time(11, 30), time(12, 30)),
                        (time(17), time(18)),
                        (time(21, 30), time(22, 30)),
                    )
                ),
            }
        ),
        "infection": ConditionPlan(
            {
                "thermometer": Schedule(windows=((time(7), time(9)), (time(19), time(21)))),
                "oximeter": Schedule(windows=(morning,)),
            }
        ),
    }


@dataclass(frozen=True, slots=True)
class Cohort:
    """Who is simulated. `patients` maps a condition to a count."""

    patients: Mapping[str, int]
    seed: int = 1
    timezone: str = "Europe/Oslo"
    kit_prefix: str = "SIM"
    plans: Mapping[str, ConditionPlan] = field(default_factory=default_plans)
    cgm_share: float = 0.0  # share of diabetes patients wearing a continuous monitor instead of a meter
    cgm_every: timedelta = timedelta(minutes=5)
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        for condition, count in self.patients.items():
            if condition not in CONDITIONS:
                raise CohortError(f"unknown condition {condition!r}; use one of {', '.join(CONDITIONS)}")
            if count < 0:
                raise CohortError(f"the number of {condition} patients must not be negative (got {count})")
        if sum(self.patients.values()) == 0:
            raise CohortError("the cohort has no patients; give at least one count, e.g. heart_failure=10")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,30}", self.kit_prefix):
            raise CohortError(f"kit_prefix {self.kit_prefix!r} must be letters, digits, '.', '_' or '-'")
        if not 0.0 <= self.cgm_share <= 1.0:
            raise CohortError(f"cgm_share must be between 0 and 1 (got {self.cgm_share})")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise CohortError(
                f"unknown time zone {self.timezone!r}; use an IANA name like Europe/Oslo"
            ) from exc

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def size(self) -> int:
        return sum(self.patients.values())


def parse_counts(text: str) -> dict[str, int]:
    """`heart_failure=25,copd=25` (as given on the command line) to a count per condition."""
    counts: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, number = part.partition("=")
        if not sep or not number.strip().isdigit():
            raise CohortError(f"{part!r} should look like heart_failure=25 (condition=count)")
        counts[name.strip()] = int(number)
    return counts


def _table(doc: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, Mapping):
        raise CohortError(f"{where}: [{key}] must be a table")
    return value


def _number(value: object, where: str, *, low: float = 0.0, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CohortError(f"{where} must be a number (got {value!r})")
    if value < low or (high is not None and value > high):
        bound = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise CohortError(f"{where} must be {bound} (got {value!r})")
    return float(value)


_TOP_KEYS = {"seed", "timezone", "kit_prefix", "patients", "conditions", "cgm_share", "cgm_every", "faults"}


def load_cohort(path: Path) -> Cohort:
    """Read a cohort file; every mistake is reported with the key it is in and what to write instead."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CohortError(f"cohort file {path} not found; `gateway-sim example-cohort` prints one") from None
    except tomllib.TOMLDecodeError as exc:
        raise CohortError(f"{path} is not valid TOML: {exc}") from None
    where = str(path)
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise CohortError(f"{where}: unknown keys {sorted(unknown)}; expected some of {sorted(_TOP_KEYS)}")
    patients = {
        str(k): int(_number(v, f"{where}: patients.{k}")) for k, v in _table(doc, "patients", where).items()
    }
    plans = default_plans()
    for condition, spec in _table(doc, "conditions", where).items():
        if condition not in CONDITIONS:
            raise CohortError(
                f"{where}: [conditions.{condition}] is not a condition; use {', '.join(CONDITIONS)}"
            )
        plans[condition] = _condition_plan(spec, plans[condition], f"{where}: conditions.{condition}")
    cgm_every = doc.get("cgm_every", "every 5m")
    every = Schedule.parse(str(cgm_every), where=f"{where}: cgm_every").every
    if every is None:
        raise CohortError(f"{where}: cgm_every must be an interval like 'every 5m'")
    try:
        return Cohort(
            patients=patients,
            seed=int(_number(doc.get("seed", 1), f"{where}: seed")),
            timezone=str(doc.get("timezone", "Europe/Oslo")),
            kit_prefix=str(doc.get("kit_prefix", "SIM")),
            plans=plans,
            cgm_share=_number(doc.get("cgm_share", 0.0), f"{where}: cgm_share", high=1.0),
            cgm_every=every,
            faults=Faults.from_mapping(_table(doc, "faults", where), where=f"{where}: faults"),
        )
    except CohortError as exc:
        raise CohortError(f"{where}: {exc}") from None


def _condition_plan(spec: object, default: ConditionPlan, where: str) -> ConditionPlan:
    if not isinstance(spec, Mapping):
        raise CohortError(f"{where} must be a table")
    unknown = set(spec) - {"devices", "schedule", "episode_share"}
    if unknown:
        raise CohortError(f"{where}: unknown keys {sorted(unknown)}; use devices, schedule, episode_share")
    names = spec.get("devices", list(default.devices))
    if not isinstance(names, list) or not names:
        raise CohortError(f"{where}.devices must be a non-empty list, e.g. ['scale', 'oximeter']")
    schedules = spec.get("schedule", {})
    if not isinstance(schedules, Mapping):
        raise CohortError(f"{where}.schedule must be a table of device = windows")
    devices: dict[str, Schedule] = {}
    for name in names:
        if name not in DEVICES:
            raise CohortError(f"{where}: unknown device {name!r}; use one of {', '.join(DEVICES)}")
        if name in schedules:
            devices[name] = Schedule.parse(schedules[name], where=f"{where}.schedule.{name}")
        elif name in default.devices:
            devices[name] = default.devices[name]
        else:
            raise CohortError(f"{where}.schedule.{name} is missing: say when the {name} is used")
    stray = set(schedules) - set(devices)
    if stray:
        raise CohortError(f"{where}.schedule names devices the kit does not have: {sorted(stray)}")
    share = _number(spec.get("episode_share", default.episode_share), f"{where}.episode_share", high=1.0)
    return replace(default, devices=devices, episode_share=share)


EXAMPLE_COHORT = """\
# A Vaktrom simulator cohort. Every key is optional except [patients].
seed = 42                   # same seed, same kits, readings, faults and episodes
timezone = "Europe/Oslo"    # schedules are in the patients' local time
kit_prefix = "SIM"          # kit serials are SIM-000001, SIM-000002, ...
cgm_share = 0.2             # share of diabetes patients with a continuous glucose monitor
cgm_every = "every 5m"

[patients]                  # how many patients of each condition
heart_failure = 25
copd = 25
diabetes = 25
infection = 25

[conditions.heart_failure]  # override a condition's kit and routine (defaults shown)
devices = ["scale", "oximeter", "bp_cuff"]
schedule.scale = ["07:00-10:00"]
schedule.oximeter = ["08:00-10:00", "18:00-21:00"]
schedule.bp_cuff = ["07:00-09:00", "18:00-21:00"]
episode_share = 0.5         # share of these patients who get one injected episode

[faults]                    # kit misbehaviour; every rate is a probability (0 switches it off)
duplicate = 0.01            # a message is later resent unchanged (same seq)
out_of_order = 0.01         # a message is held back and sent after the kit's next one
offline = 0.03              # chance per kit and day of an offline period (store and forward)
offline_hours = [2, 10]     # how long such a period lasts
clock_skew = 0.05           # share of kits whose clock is off
clock_skew_minutes = 45     # by up to this much, either way
wrong_unit = 0.003          # degF labelled Cel, pounds, mg/dL
implausible = 0.002         # SpO2 0 %, weight 0 kg
malformed = 0.001           # truncated JSON
oversized = 0.0005          # a payload over the 64 KiB limit
silent = 0.02               # share of kits that stop sending part-way
skip = 0.04                 # chance a patient skips a scheduled measurement
"""
