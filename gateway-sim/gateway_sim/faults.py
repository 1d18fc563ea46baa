"""Kit misbehaviour, each kind switchable and rated, as seen in real home-monitoring kits.

Rates are probabilities: per message (duplicate, out_of_order, malformed, oversized), per reading
(wrong_unit, implausible, skip), per kit and day (offline) or per kit (clock_skew, silent). A rate of
0 switches the kind off. Which readings are hit is drawn from the run's seed, so it repeats.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from gateway_sim._errors import CohortError

__all__ = ["BROKEN_LABELS", "Faults"]

# Labels the ledger gives deliberately bad readings and messages, so a checker can tell them apart.
BROKEN_LABELS = ("wrong_unit", "implausible", "malformed", "oversized")


@dataclass(frozen=True, slots=True)
class Faults:
    duplicate: float = 0.0
    out_of_order: float = 0.0
    offline: float = 0.0
    offline_hours: tuple[float, float] = (2.0, 10.0)
    clock_skew: float = 0.0
    clock_skew_minutes: float = 45.0
    wrong_unit: float = 0.0
    implausible: float = 0.0
    malformed: float = 0.0
    oversized: float = 0.0
    silent: float = 0.0
    skip: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "offline_hours":
                low, high = value
                if not 0 < low <= high <= 24 * 7:
                    raise CohortError(
                        f"offline_hours must be [low, high] hours with 0 < low <= high <= 168, got {value}"
                    )
            elif f.name == "clock_skew_minutes":
                if not 0 <= value <= 24 * 60:
                    raise CohortError(f"clock_skew_minutes must be between 0 and 1440, got {value}")
            elif not 0.0 <= value <= 1.0:
                raise CohortError(f"fault rate {f.name} must be a probability between 0 and 1, got {value}")

    @property
    def any(self) -> bool:
        return any(
            getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("offline_hours", "clock_skew_minutes")
        )

    @classmethod
    def from_mapping(cls, values: Mapping[str, object], *, where: str = "faults") -> Faults:
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise CohortError(f"{where}: unknown fault kinds {sorted(unknown)}; known are {sorted(known)}")
        kwargs: dict[str, object] = {}
        for name, value in values.items():
            if name == "offline_hours":
                if not (isinstance(value, list | tuple) and len(value) == 2):
                    raise CohortError(f"{where}.offline_hours must be two numbers, e.g. [2, 10]")
                kwargs[name] = (_float(value[0], where, name), _float(value[1], where, name))
            else:
                kwargs[name] = _float(value, where, name)
        try:
            return cls(**kwargs)  # type: ignore[arg-type]
        except CohortError as exc:
            raise CohortError(f"{where}: {exc}") from None

    @classmethod
    def parse(cls, text: str) -> Faults:
        """`duplicate=0.01,malformed=0.001` as given on the command line."""
        values: dict[str, object] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, number = part.partition("=")
            if not sep:
                raise CohortError(f"{part!r} should look like duplicate=0.01 (kind=rate)")
            values[name.strip()] = number.strip()
        return cls.from_mapping(values, where="--faults")


def _float(value: object, where: str, name: str) -> float:
    try:
        if isinstance(value, bool):
            raise TypeError
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CohortError(f"{where}.{name} must be a number, got {value!r}") from None
