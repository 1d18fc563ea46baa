-- The archive on TimescaleDB for real (issue #31). Creates no table; the relations it may recreate
-- keep their owners (0013): streams.archive owns measurements, rejections and both aggregates.
--
-- 0001 and 0003 take their TimescaleDB branches when the database has the extension when they
-- run, and have done so on the local stack since it preloads TimescaleDB. A database that applied
-- them on plain PostgreSQL and gets TimescaleDB later kept plain tables and views, while
-- vaktrom_archive_mode() said 'timescaledb' as soon as the extension existed: the archive's
-- start-up call vaktrom_configure_archive() then asked for a compression policy on a plain table
-- and failed. So:
--   0. vaktrom_timescaledb() gets 0001's revised form, which the owner may run on plain
--      PostgreSQL that has TimescaleDB installed but not preloaded;
--   1. vaktrom_archive_mode() says 'timescaledb' only when `measurements` is a hypertable;
--   2. a database where TimescaleDB is usable but `measurements` is still plain is converted
--      here: hypertables (existing rows move into chunks: this takes a while on a large table),
--      compression, the two continuous aggregates in place of the views, the aggregate reader,
--      and the policies from archive_policy. A plain-PostgreSQL database is left as it is.
-- The files 0001 and 0003 stay as they were applied (their checksums are recorded).

-- 0001's revised probe (see there), for databases that applied its first form.
CREATE OR REPLACE FUNCTION vaktrom_timescaledb() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
        OR EXISTS (SELECT 1 FROM pg_settings
                   WHERE name = 'timescaledb.max_background_workers' AND context = 'postmaster')
$$;

CREATE OR REPLACE FUNCTION vaktrom_archive_mode() RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    hyper boolean := false;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') THEN
        -- dynamic: the view does not exist without the extension
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                                WHERE hypertable_schema = current_schema()
                                  AND hypertable_name = ''measurements'')'
            INTO hyper;
    END IF;
    RETURN CASE WHEN hyper THEN 'timescaledb' ELSE 'postgresql' END;
END
$$;

DO $$
DECLARE
    policy archive_policy%ROWTYPE;
BEGIN
    IF NOT vaktrom_timescaledb() OR vaktrom_archive_mode() = 'timescaledb' THEN
        RETURN;  -- plain PostgreSQL, or 0001/0003 made the hypertables already
    END IF;
    -- Only a superuser may create the extension (infra/stack and the compose image do); when it
    -- is preloaded but not created here this fails and says so, and nothing is changed.
    CREATE EXTENSION IF NOT EXISTS timescaledb;
    PERFORM create_hypertable('measurements', 'measured_at',
        chunk_time_interval => interval '7 days', migrate_data => true);
    PERFORM create_hypertable('rejections', 'received_at',
        chunk_time_interval => interval '30 days', migrate_data => true);
    ALTER TABLE measurements SET (
        timescaledb.compress,
        timescaledb.compress_segmentby = 'patient_id, metric',
        timescaledb.compress_orderby = 'measured_at DESC'
    );
    DROP VIEW measurements_hourly;
    DROP VIEW measurements_daily;
    EXECUTE $q$
        CREATE MATERIALIZED VIEW measurements_hourly
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT patient_id, metric, time_bucket(interval '1 hour', measured_at) AS bucket,
               count(*) AS readings, min(value) AS min_value, max(value) AS max_value,
               avg(value) AS mean_value, last(value, measured_at) AS last_value,
               max(measured_at) AS last_at
        FROM measurements
        GROUP BY patient_id, metric, bucket
        WITH NO DATA
    $q$;
    EXECUTE $q$
        CREATE MATERIALIZED VIEW measurements_daily
        WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
        SELECT patient_id, metric, time_bucket(interval '1 day', measured_at) AS bucket,
               count(*) AS readings, min(value) AS min_value, max(value) AS max_value,
               avg(value) AS mean_value, last(value, measured_at) AS last_value,
               max(measured_at) AS last_at
        FROM measurements
        GROUP BY patient_id, metric, bucket
        WITH NO DATA
    $q$;
    COMMENT ON VIEW measurements_hourly IS 'owner: streams.archive';
    COMMENT ON VIEW measurements_daily IS 'owner: streams.archive';
    -- Until the policies' first runs, real-time aggregation computes every bucket from the raw rows.
    -- Unlike 0003's (a new database fills from now on), these refresh from the first row: the
    -- history converted here is older than 0003's windows, and a bucket below the aggregate's
    -- watermark that no refresh materialised would read as empty. A refresh only recomputes what
    -- changed, so after the first run this costs what 0003's does.
    PERFORM add_continuous_aggregate_policy('measurements_hourly',
        start_offset => NULL, end_offset => interval '1 hour',
        schedule_interval => interval '15 minutes');
    PERFORM add_continuous_aggregate_policy('measurements_daily',
        start_offset => NULL, end_offset => interval '1 day',
        schedule_interval => interval '1 hour');
    EXECUTE $q$
        CREATE OR REPLACE FUNCTION measurement_buckets(p_patient text, p_metric text, p_width text,
                                                       p_from timestamptz, p_to timestamptz)
        RETURNS TABLE (bucket timestamptz, readings bigint, min_value double precision,
                       max_value double precision, mean_value double precision,
                       last_value double precision, last_at timestamptz)
        LANGUAGE plpgsql STABLE AS $b$
        BEGIN
            IF p_width = 'hour' THEN
                RETURN QUERY SELECT h.bucket, h.readings, h.min_value, h.max_value, h.mean_value,
                                    h.last_value, h.last_at
                             FROM measurements_hourly h
                             WHERE h.patient_id = p_patient AND h.metric = p_metric
                               AND h.bucket >= p_from AND h.bucket < p_to
                             ORDER BY h.bucket;
            ELSIF p_width = 'day' THEN
                RETURN QUERY SELECT d.bucket, d.readings, d.min_value, d.max_value, d.mean_value,
                                    d.last_value, d.last_at
                             FROM measurements_daily d
                             WHERE d.patient_id = p_patient AND d.metric = p_metric
                               AND d.bucket >= p_from AND d.bucket < p_to
                             ORDER BY d.bucket;
            ELSE
                RAISE EXCEPTION 'bucket width must be hour or day, not %', p_width;
            END IF;
        END
        $b$
    $q$;
    SELECT * INTO policy FROM archive_policy;
    PERFORM vaktrom_configure_archive(policy.compress_after, policy.retain_for);
END
$$;
