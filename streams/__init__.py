"""Vaktrom's stream processors: `streams.archive` (Kafka -> database) and the monitoring app."""
