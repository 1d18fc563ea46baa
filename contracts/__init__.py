"""Vaktrom's wire contracts: the payloads and topic names every stage shares.

A stage imports `contracts` and nothing of another stage. Payload types are msgspec structs (fast,
strict decoding); their JSON Schemas are generated into `contracts/schemas/` for other clients.

    kit  --MQTT-->  KitReadingMessage, KitStatusMessage          (contracts._kit)
    kit  <--MQTT--  DeliveryReceipt
    bridge -Kafka-> Measurement, Rejection, KitStatusEvent       (contracts._records)
    monitor -Kafka-> AlertEvent                                  (contracts._alert)
    registry -Kafka-> CarePlan                                   (contracts._careplan)
    any stage -Kafka-> Quarantined (a record it set aside)      (contracts._quarantine)
"""

from contracts import topics
from contracts._alert import ALERT_SCHEMA, AlertEvent, Baseline, EpisodeChange, Evidence, Severity, Threshold
from contracts._careplan import (
    CAREPLAN_SCHEMA,
    RULE_IDS,
    THRESHOLD_LIMITS,
    BaselineSettings,
    CarePlan,
    Condition,
    ExpectedMeasurement,
    ScheduleWindow,
    Spo2Scale,
    ThresholdLimit,
    threshold_problems,
)
from contracts._ids import episode_id, format_instant, measurement_id, rejection_id
from contracts._kit import (
    KIT_READING_SCHEMA,
    KIT_STATUS_SCHEMA,
    MAX_KIT_PAYLOAD_BYTES,
    MAX_READINGS_PER_MESSAGE,
    RECEIPT_SCHEMA,
    DeliveryReceipt,
    KitReading,
    KitReadingMessage,
    KitState,
    KitStatusMessage,
    ReadingOutcome,
    ReceiptEntry,
)
from contracts._metrics import (
    GLUCOSE_MG_DL_PER_MMOL_L,
    METRICS,
    UNIT_ALIASES,
    Metric,
    MetricSpec,
    PlausibleRange,
    canonical_unit_code,
    to_canonical,
)
from contracts._quarantine import (
    MAX_QUARANTINE_DETAIL_CHARS,
    MAX_QUARANTINE_RAW_BYTES,
    QUARANTINE_SCHEMA,
    DatabaseFault,
    Quarantined,
    QuarantineReason,
    database_fault,
    quarantined,
    unusable_field,
)
from contracts._records import (
    KIT_STATUS_EVENT_SCHEMA,
    MAX_RAW_EXCERPT_BYTES,
    MEASUREMENT_SCHEMA,
    REJECTION_SCHEMA,
    KitStatusEvent,
    Measurement,
    Rejection,
    RejectReason,
    Trace,
)
from contracts._schema import SCHEMA_DIR, SCHEMA_TYPES

__all__ = [
    "ALERT_SCHEMA",
    "CAREPLAN_SCHEMA",
    "GLUCOSE_MG_DL_PER_MMOL_L",
    "KIT_READING_SCHEMA",
    "KIT_STATUS_EVENT_SCHEMA",
    "KIT_STATUS_SCHEMA",
    "MAX_KIT_PAYLOAD_BYTES",
    "MAX_QUARANTINE_DETAIL_CHARS",
    "MAX_QUARANTINE_RAW_BYTES",
    "MAX_RAW_EXCERPT_BYTES",
    "MAX_READINGS_PER_MESSAGE",
    "MEASUREMENT_SCHEMA",
    "METRICS",
    "QUARANTINE_SCHEMA",
    "RECEIPT_SCHEMA",
    "REJECTION_SCHEMA",
    "RULE_IDS",
    "SCHEMA_DIR",
    "SCHEMA_TYPES",
    "THRESHOLD_LIMITS",
    "UNIT_ALIASES",
    "AlertEvent",
    "Baseline",
    "BaselineSettings",
    "CarePlan",
    "Condition",
    "DatabaseFault",
    "DeliveryReceipt",
    "EpisodeChange",
    "Evidence",
    "ExpectedMeasurement",
    "KitReading",
    "KitReadingMessage",
    "KitState",
    "KitStatusEvent",
    "KitStatusMessage",
    "Measurement",
    "Metric",
    "MetricSpec",
    "PlausibleRange",
    "QuarantineReason",
    "Quarantined",
    "ReadingOutcome",
    "ReceiptEntry",
    "RejectReason",
    "Rejection",
    "ScheduleWindow",
    "Severity",
    "Spo2Scale",
    "Threshold",
    "ThresholdLimit",
    "Trace",
    "canonical_unit_code",
    "database_fault",
    "episode_id",
    "format_instant",
    "measurement_id",
    "quarantined",
    "rejection_id",
    "threshold_problems",
    "to_canonical",
    "topics",
    "unusable_field",
]
