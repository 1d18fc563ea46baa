"""What the pipeline itself says on a patient's kit, in the patient's language.

A kit shows the language of its patient's care plan (`CarePlan.language`), never the language of the
nurse who sent something: a nurse's own words go out as written, but the standard texts (the
monitor's reminder before "measurement missed", the console's reminder when the nurse writes
nothing) are these msgids, translated through the "kit" catalogue:

    contracts/locale/<language>/LC_MESSAGES/kit.po      (kept in git; `make i18n` updates them)

English is the source language (its catalogue is the identity). The catalogue is read by
`runtime.kit_texts`, as the contracts do no I/O; this module only names the strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal

from contracts._metrics import Metric

__all__ = [
    "DEFAULT_KIT_LANGUAGE",
    "KIT_LANGUAGES",
    "KIT_TEXT_DIR",
    "KIT_TEXT_DOMAIN",
    "REMINDERS",
    "REMINDER_ANY",
    "KitLanguage",
]

KitLanguage = Literal["nb", "en"]
KIT_LANGUAGES: Final[tuple[KitLanguage, ...]] = ("nb", "en")
DEFAULT_KIT_LANGUAGE: Final[KitLanguage] = "nb"
KIT_TEXT_DIR: Final = Path(__file__).resolve().parent / "locale"
KIT_TEXT_DOMAIN: Final = "kit"


def N_(msgid: str) -> str:  # noqa: N802 - the conventional name, which `make i18n` extracts
    """Mark a kit text for translation where it is defined; `runtime.kit_texts` translates it."""
    return msgid


# The reminder for one measurement: the monitor's automatic one, and the console's when the nurse
# writes nothing. Blood pressure is one cuff measurement, whichever component was missed.
_BLOOD_PRESSURE = N_("Reminder: please measure your blood pressure now and send the measurement.")
REMINDERS: Final[Mapping[Metric, str]] = MappingProxyType(
    {
        Metric.BODY_WEIGHT: N_("Reminder: please weigh yourself now and send the measurement."),
        Metric.SPO2: N_("Reminder: please measure your oxygen saturation now and send the measurement."),
        Metric.PULSE: N_("Reminder: please measure your pulse now and send the measurement."),
        Metric.BODY_TEMPERATURE: N_("Reminder: please take your temperature now and send the measurement."),
        Metric.GLUCOSE: N_("Reminder: please measure your blood sugar now and send the measurement."),
        Metric.BP_SYSTOLIC: _BLOOD_PRESSURE,
        Metric.BP_DIASTOLIC: _BLOOD_PRESSURE,
    }
)
# A reminder that names no measurement (the console's "today's measurements").
REMINDER_ANY: Final = N_("Reminder: please take today's measurements and send them.")
