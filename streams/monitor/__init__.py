"""The monitoring stage: per-patient baselines, clinical rules and alert episodes (a micro-batch Kafka worker)."""
