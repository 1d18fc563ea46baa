"""The runtime kernel every stage may import: the Kafka client layer (`runtime.kafka`).

`contracts` holds wire formats and names and does no I/O; `runtime` holds how a stage talks to the
services underneath (issue #30 moves the stage runner, operations server and settings here too).
"""
