"""Cohort files and command-line counts: valid ones load, wrong ones say which key is wrong."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path

import pytest
from gateway_sim._errors import CohortError
from gateway_sim.cohort import EXAMPLE_COHORT, Cohort, Schedule, load_cohort, parse_counts
from gateway_sim.faults import Faults


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cohort.toml"
    path.write_text(text)
    return path


def test_the_printed_example_cohort_loads_as_documented(tmp_path: Path) -> None:
    """`gateway-sim example-cohort` output is a working file: counts, seed, faults, overrides."""
    cohort = load_cohort(_write(tmp_path, EXAMPLE_COHORT))
    assert cohort.patients == {"heart_failure": 25, "copd": 25, "diabetes": 25, "infection": 25}
    assert cohort.seed == 42
    assert cohort.cgm_share == 0.2
    assert cohort.cgm_every == timedelta(minutes=5)
    assert cohort.faults.duplicate == 0.01
    assert cohort.faults.offline_hours == (2.0, 10.0)
    assert cohort.plans["heart_failure"].devices["scale"].windows == ((time(7), time(10)),)


def test_schedules_parse_windows_and_intervals() -> None:
    """Daily windows and fixed intervals are the two ways to say when a device is used."""
    assert Schedule.parse(["07:00-10:00", "18:00-21:30"], where="x").windows == (
        (time(7), time(10)),
        (time(18), time(21, 30)),
    )
    assert Schedule.parse("every 5m", where="x").every == timedelta(minutes=5)
    assert Schedule.parse("every 2h", where="x").every == timedelta(hours=2)


@pytest.mark.parametrize("spec", ["10:00-07:00", "7-10", "25:00-26:00", "every 0m", []])
def test_bad_schedules_are_refused_with_the_place_named(spec: str | list[str]) -> None:
    """A window that runs backwards or is not a time is an error naming where it was written."""
    with pytest.raises(CohortError, match=r"conditions\.copd\.schedule\.oximeter"):
        Schedule.parse(spec, where="conditions.copd.schedule.oximeter")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[patients]\nheart_failur = 3\n", "unknown condition 'heart_failur'"),
        ("[patients]\n", "no patients"),
        ("[patients]\ncopd = -1\n", "copd.*at least 0"),
        ("seeds = 3\n[patients]\ncopd = 1\n", "unknown keys \\['seeds'\\]"),
        ("[patients]\ncopd = 1\n[faults]\nduplicat = 0.1\n", "unknown fault kinds \\['duplicat'\\]"),
        ("[patients]\ncopd = 1\n[faults]\nduplicate = 1.5\n", "duplicate must be a probability"),
        ("[patients]\ncopd = 1\n[conditions.copd]\ndevices = ['toaster']\n", "unknown device 'toaster'"),
        ("[patients]\ncopd = 1\n[conditions.copd]\ndevices = ['scale']\n", "schedule.scale is missing"),
        ("timezone = 'Mars/Olympus'\n[patients]\ncopd = 1\n", "unknown time zone"),
        ("[patients\n", "not valid TOML"),
    ],
)
def test_cohort_file_mistakes_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    """Each mistake in a cohort file names the key and the accepted values, and the file path."""
    path = _write(tmp_path, text)
    with pytest.raises(CohortError, match=message) as info:
        load_cohort(path)
    assert str(path) in str(info.value)


def test_a_missing_cohort_file_points_at_the_example(tmp_path: Path) -> None:
    """The fix for a missing file is printed with the error."""
    with pytest.raises(CohortError, match="example-cohort"):
        load_cohort(tmp_path / "nope.toml")


def test_counts_from_the_command_line() -> None:
    """`heart_failure=25,copd=3` is the command-line form of [patients]."""
    assert parse_counts("heart_failure=25, copd=3") == {"heart_failure": 25, "copd": 3}
    with pytest.raises(CohortError, match="condition=count"):
        parse_counts("heart_failure:25")
    with pytest.raises(CohortError, match="unknown condition"):
        Cohort(patients=parse_counts("asthma=2"))


def test_fault_rates_from_the_command_line() -> None:
    """`--faults duplicate=0.01,malformed=0.001` sets those rates and leaves the rest off."""
    faults = Faults.parse("duplicate=0.01,malformed=0.001")
    assert (faults.duplicate, faults.malformed, faults.oversized) == (0.01, 0.001, 0.0)
    assert faults.any
    assert not Faults().any
    with pytest.raises(CohortError, match="must be a number"):
        Faults.parse("duplicate=often")
