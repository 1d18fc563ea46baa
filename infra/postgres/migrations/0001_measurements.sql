-- Measurements and rejections: what the archive consumer writes (issue #6 adds compression,
-- retention, continuous aggregates and the read paths on top of these tables).
-- Runs on TimescaleDB (production compose) and on plain PostgreSQL (local stack); every
-- TimescaleDB-only statement sits behind vaktrom_timescaledb().

-- True when the TimescaleDB extension is usable here: installed, or preloaded (its library then
-- defines its postmaster settings). Revised in issue #31: the first form read
-- shared_preload_libraries, which only a superuser or pg_read_all_settings may read, so on plain
-- PostgreSQL with TimescaleDB installed but not preloaded the owner could not run this file.
-- infra/migrate.py accepts the first form's checksum; 0016 replaces the function where it ran.
CREATE OR REPLACE FUNCTION vaktrom_timescaledb() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
        OR EXISTS (SELECT 1 FROM pg_settings
                   WHERE name = 'timescaledb.max_background_workers' AND context = 'postmaster')
$$;

DO $$
BEGIN
    IF vaktrom_timescaledb() THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
    END IF;
END
$$;

CREATE TABLE measurements (
    measured_at     timestamptz      NOT NULL,
    measurement_id  char(32)         NOT NULL,
    patient_id      text             NOT NULL,
    kit_id          text             NOT NULL,
    device_id       text             NOT NULL,
    metric          text             NOT NULL,
    loinc           text             NOT NULL,
    value           double precision,            -- canonical UCUM unit; NULL for a meter flag
    unit            text             NOT NULL,
    reported_value  double precision,
    reported_unit   text             NOT NULL,
    flag            text CHECK (flag IN ('HI', 'LO')),
    received_at     timestamptz      NOT NULL,
    stored_at       timestamptz      NOT NULL DEFAULT now(),
    kit_seq         bigint,
    -- A hypertable's unique keys must include its time column; the id alone decides in practice,
    -- because the measured time is part of the id.
    PRIMARY KEY (measurement_id, measured_at)
);

-- The read paths: a patient's series per metric, newest first.
CREATE INDEX measurements_patient_metric_time ON measurements (patient_id, metric, measured_at DESC);

CREATE TABLE rejections (
    rejection_id    char(32)    NOT NULL,
    received_at     timestamptz NOT NULL,
    reason          text        NOT NULL,
    detail          text        NOT NULL,
    source_topic    text        NOT NULL,
    kit_id          text,
    patient_id      text,
    reading_index   integer,
    metric          text,
    reported_value  double precision,
    reported_unit   text,
    measured_at     timestamptz,
    raw_excerpt     text        NOT NULL DEFAULT '',
    raw_size        integer     NOT NULL DEFAULT 0,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rejection_id, received_at)
);

CREATE INDEX rejections_kit_time ON rejections (kit_id, received_at DESC);
CREATE INDEX rejections_patient_time ON rejections (patient_id, received_at DESC) WHERE patient_id IS NOT NULL;

DO $$
BEGIN
    IF vaktrom_timescaledb() THEN
        PERFORM create_hypertable('measurements', 'measured_at', chunk_time_interval => interval '7 days');
        PERFORM create_hypertable('rejections', 'received_at', chunk_time_interval => interval '30 days');
    END IF;
END
$$;
