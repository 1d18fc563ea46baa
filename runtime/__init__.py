"""The runtime kernel every stage may import.

    runtime.kafka     the Kafka client layer (confluent-kafka): clients, topics, partitioning
    runtime.loop      the Kafka -> database consumer loop the archive and the alert feed share
    runtime.stage     running a stage as a process: command line, logging, signals, exit codes
    runtime.ops       the operations HTTP server: /health and /metrics
    runtime.settings  typed settings from the environment, checked at start-up
    runtime.audit     the audit log every stage that acts for a person appends to

`contracts` holds wire formats, topic names, schemas and ids and does no I/O; `runtime` holds how a
stage talks to the services underneath. Stages import both, and nothing of another stage.
"""
