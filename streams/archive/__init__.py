"""The archive: every measurement and rejection from Kafka stored exactly once in PostgreSQL/TimescaleDB.

    consumer.py   the archive on runtime.loop (offsets committed after the database)
    store.py      COPY into staging + merge by measurement id, one transaction per batch
    rows.py       records -> rows (pure)
    read.py       the read API the response centre uses (latest values, series, buckets, rejections)
    fhir.py       FHIR R4 export of a patient's measurements

`read` and `fhir` are the archive's public interface for other stages; the rest is internal.
"""
