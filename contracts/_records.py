"""What the bridge writes to Kafka: canonical measurements, rejections and kit status events.

Times are aware datetimes and travel as RFC 3339 in UTC. Every record carries a `Trace`: the
timestamps each stage adds as the reading moves on, so latency can be broken down by stage from the
data itself (the Kafka append time is the record timestamp: the measurement topics are created with
`message.timestamp.type=LogAppendTime`).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Annotated

import msgspec
from msgspec import Meta

from contracts._metrics import Metric

__all__ = [
    "KIT_STATUS_EVENT_SCHEMA",
    "MAX_RAW_EXCERPT_BYTES",
    "MEASUREMENT_SCHEMA",
    "REJECTION_SCHEMA",
    "KitStatusEvent",
    "Measurement",
    "RejectReason",
    "Rejection",
    "Trace",
]

MEASUREMENT_SCHEMA = "vaktrom.measurement.v1"
REJECTION_SCHEMA = "vaktrom.rejection.v1"
KIT_STATUS_EVENT_SCHEMA = "vaktrom.kit-status-event.v1"

MAX_RAW_EXCERPT_BYTES = 4096  # how much of a rejected payload travels with the rejection

Id32 = Annotated[str, Meta(pattern=r"^[0-9a-f]{32}$", description="Deterministic id: 32 hex digits.")]
Pseudonym = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$",
        description="Pseudonymous patient id; never a name or national identity number.",
    ),
]
Serial = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")]


class Trace(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """Timestamps stamped along the way; a stage fills in its own and keeps the others."""

    kit_sent: datetime | None = None  # the kit's clock when it published (may be skewed)
    bridge_received: datetime | None = None  # the bridge's clock when the MQTT message arrived
    bridge_produced: datetime | None = None  # the bridge handed the record to the Kafka producer
    kafka_appended: datetime | None = None  # the broker appended it (LogAppendTime), as the monitor read it
    monitor_processed: datetime | None = None  # the monitor finished evaluating rules on it


class Measurement(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="schema",
    tag=MEASUREMENT_SCHEMA,
):
    """One valid reading, normalised: topic `vaktrom.measurements.v1`, keyed by `patient_id`.

    `value`/`unit` are canonical UCUM (kg, %, /min, Cel, mmol/L); `reported_value`/`reported_unit`
    are what the device said, kept because glucose rules compare in the reported unit. A meter flag
    (`HI`/`LO`) has no value: it is a real reading beyond the meter's range.
    """

    measurement_id: Id32
    patient_id: Pseudonym
    kit_id: Serial
    device_id: Serial
    metric: Metric
    loinc: str
    value: float | None
    unit: str
    reported_value: float | None
    reported_unit: str
    flag: str | None = None
    measured_at: datetime
    received_at: datetime
    kit_seq: int | None = None
    trace: Trace = Trace()
    # the cuff measurement (blood-pressure panel) this is a component of; None for a lone reading
    panel_id: Id32 | None = None


class RejectReason(enum.StrEnum):
    """Why the bridge refused a payload or a reading. The codes are stable; add, never rename."""

    MALFORMED = "malformed"  # not JSON, not UTF-8
    SCHEMA = "schema"  # JSON, but not the kit-reading contract
    TOO_LARGE = "too_large"
    TOPIC_MISMATCH = "topic_mismatch"  # the payload names another kit than the topic it came on
    UNKNOWN_KIT = "unknown_kit"
    KIT_NOT_ASSIGNED = "kit_not_assigned"  # known kit, no patient at the measured time
    KIT_RETIRED = "kit_retired"
    UNKNOWN_DEVICE = "unknown_device"  # the device is not registered to this kit
    UNKNOWN_METRIC = "unknown_metric"
    UNIT_NOT_ACCEPTED = "unit_not_accepted"
    MISSING_VALUE = "missing_value"  # neither a value nor a meter flag
    FLAG_NOT_ACCEPTED = "flag_not_accepted"  # a HI/LO flag on a metric whose meters have none
    IMPLAUSIBLE = "implausible"  # outside the plausibility range (a data-quality issue, not an alert)
    CLOCK_FUTURE = "clock_future"  # measured too far in the future of the bridge's clock
    CLOCK_PAST = "clock_past"  # older than the retention the pipeline accepts
    INTERNAL_ERROR = "internal_error"  # the bridge failed on it (a bug); kept here for operators
    # A text field holds a control character (NUL, C0, DEL, C1) or is longer than the field allows
    INVALID_TEXT = "invalid_text"
    # Not a verdict on the reading: the kit sent more than its fair share (readings or bytes per
    # minute). For a readings message nothing is stored or recorded; the kit keeps the message and
    # resends it later. A FHIR message (no receipt) is recorded as one such rejection of the whole
    # message, at most one per kit per minute (docs/fair-share.md).
    RATE_LIMITED = "rate_limited"
    # Questionnaire answers (contracts._answers): a questionnaire id or version the pipeline does not
    # know, and answers that do not fit their questionnaire (wrong type, value, linkId, missing)
    UNKNOWN_QUESTIONNAIRE = "unknown_questionnaire"
    ANSWER_NOT_ACCEPTED = "answer_not_accepted"
    # A blood-pressure reading whose parts do not fit together: diastolic not below systolic, a
    # pressure missing, or `value` sent instead of `systolic`/`diastolic` (or those on another metric)
    INCONSISTENT = "inconsistent"
    # A kit's acknowledgement (`acks` channel) of a command the bridge does not know, or of a
    # command sent to another kit
    UNKNOWN_COMMAND = "unknown_command"
    FOREIGN_COMMAND = "foreign_command"


class Rejection(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="schema",
    tag=REJECTION_SCHEMA,
):
    """A refused payload or reading, for operators: topic `vaktrom.rejections.v1`, keyed by kit.

    `detail` says in words what was wrong and, where it is unambiguous, what was probably meant
    (98.6 "Cel" is probably 37.0 Cel reported in Fahrenheit); the value is never silently converted.
    `raw_excerpt` is the payload as text, cut to MAX_RAW_EXCERPT_BYTES. The bridge writes every text
    field printable: control characters escaped (NUL as `\\x00`), bytes that are not UTF-8 as
    `\\xNN`, each field bounded; a consumer still checks what did not come from the bridge.
    """

    rejection_id: Id32
    reason: RejectReason
    detail: str
    source_topic: str
    received_at: datetime
    kit_id: str | None = None
    patient_id: str | None = None
    reading_index: int | None = None  # which reading of the message; None when the whole message
    metric: str | None = None
    reported_value: float | None = None
    reported_unit: str | None = None
    measured_at: datetime | None = None
    raw_excerpt: str = ""
    raw_size: int = 0
    trace: Trace = Trace()


class KitStatusEvent(
    msgspec.Struct,
    frozen=True,
    kw_only=True,
    forbid_unknown_fields=True,
    tag_field="schema",
    tag=KIT_STATUS_EVENT_SCHEMA,
):
    """A kit's status message, attributed: topic `vaktrom.kit-status.v1`, keyed by `patient_id`."""

    kit_id: Serial
    patient_id: Pseudonym | None
    state: str
    at: datetime
    received_at: datetime
    queued: int = 0
    battery: float | None = None
