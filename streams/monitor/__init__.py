"""The monitoring stage: per-patient baselines, clinical rules and alert episodes (micro-batches)."""
