-- The archive's storage policy and read paths (issue #6).
--
-- Two modes, one interface. `vaktrom_archive_mode()` says which one is active:
--   timescaledb  hypertables (0001), compression segmented by patient and metric, retention
--                policies, continuous aggregates (hourly, daily) with real-time aggregation;
--   postgresql   the same tables; the aggregates are computed on read with date_bin(), and the
--                archive consumer applies retention itself (vaktrom_apply_retention()).
-- The read API only calls the functions below (`measurement_buckets`, ...), so its code is the same
-- in both modes; only the function bodies differ. Statements that only run on TimescaleDB sit in
-- the `IF vaktrom_timescaledb()` branches.

CREATE FUNCTION vaktrom_archive_mode() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')
                THEN 'timescaledb' ELSE 'postgresql' END
$$;

-- One row: how long raw rows stay uncompressed and how long they are kept at all. The archive
-- consumer writes its settings here at start-up through vaktrom_configure_archive().
CREATE TABLE archive_policy (
    singleton       boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    compress_after  interval    NOT NULL DEFAULT interval '7 days',
    retain_for      interval    NOT NULL DEFAULT interval '10 years',
    updated_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO archive_policy DEFAULT VALUES;

CREATE FUNCTION vaktrom_configure_archive(p_compress_after interval, p_retain_for interval)
RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF p_retain_for <= p_compress_after THEN
        RAISE EXCEPTION 'retention (%) must be longer than the compression age (%)', p_retain_for, p_compress_after;
    END IF;
    UPDATE archive_policy SET compress_after = p_compress_after, retain_for = p_retain_for, updated_at = now();
    IF vaktrom_archive_mode() = 'timescaledb' THEN
        -- TimescaleDB only: replace the background jobs with ones that use the new ages.
        PERFORM remove_compression_policy('measurements', if_exists => true);
        PERFORM add_compression_policy('measurements', compress_after => p_compress_after);
        PERFORM remove_retention_policy('measurements', if_exists => true);
        PERFORM add_retention_policy('measurements', drop_after => p_retain_for);
        PERFORM remove_retention_policy('rejections', if_exists => true);
        PERFORM add_retention_policy('rejections', drop_after => p_retain_for);
    END IF;
    RETURN vaktrom_archive_mode();
END
$$;

-- Plain PostgreSQL has no retention jobs: the archive consumer calls this now and then. On
-- TimescaleDB the policies above drop whole chunks instead and this does nothing.
CREATE FUNCTION vaktrom_apply_retention() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    horizon timestamptz;
    removed bigint := 0;
    n bigint;
BEGIN
    IF vaktrom_archive_mode() = 'timescaledb' THEN
        RETURN 0;
    END IF;
    SELECT now() - retain_for INTO horizon FROM archive_policy;
    DELETE FROM measurements WHERE measured_at < horizon;
    GET DIAGNOSTICS n = ROW_COUNT;
    removed := n;
    DELETE FROM rejections WHERE received_at < horizon;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN removed + n;
END
$$;

-- Aggregates per patient, metric and bucket: min, max, mean, count, last. `readings` counts meter
-- flags (HI/LO) too; min/max/mean are over numeric values only.
DO $$
BEGIN
    IF vaktrom_timescaledb() THEN
        -- TimescaleDB only: compression and continuous aggregates.
        ALTER TABLE measurements SET (
            timescaledb.compress,
            timescaledb.compress_segmentby = 'patient_id, metric',
            timescaledb.compress_orderby = 'measured_at DESC'
        );
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
        PERFORM add_continuous_aggregate_policy('measurements_hourly',
            start_offset => interval '3 days', end_offset => interval '1 hour',
            schedule_interval => interval '15 minutes');
        PERFORM add_continuous_aggregate_policy('measurements_daily',
            start_offset => interval '40 days', end_offset => interval '1 day',
            schedule_interval => interval '1 hour');
        PERFORM vaktrom_configure_archive(interval '7 days', interval '10 years');
    ELSE
        CREATE VIEW measurements_hourly AS
            SELECT patient_id, metric,
                   date_bin(interval '1 hour', measured_at, timestamptz '2000-01-01 00:00:00+00') AS bucket,
                   count(*) AS readings, min(value) AS min_value, max(value) AS max_value,
                   avg(value) AS mean_value,
                   (array_agg(value ORDER BY measured_at DESC))[1] AS last_value,
                   max(measured_at) AS last_at
            FROM measurements
            GROUP BY 1, 2, 3;
        CREATE VIEW measurements_daily AS
            SELECT patient_id, metric,
                   date_bin(interval '1 day', measured_at, timestamptz '2000-01-01 00:00:00+00') AS bucket,
                   count(*) AS readings, min(value) AS min_value, max(value) AS max_value,
                   avg(value) AS mean_value,
                   (array_agg(value ORDER BY measured_at DESC))[1] AS last_value,
                   max(measured_at) AS last_at
            FROM measurements
            GROUP BY 1, 2, 3;
    END IF;
END
$$;

-- The bucketed series the read API asks for: one patient, one metric, a window, 'hour' or 'day'.
-- TimescaleDB reads the continuous aggregate (materialised buckets plus the recent, not yet
-- materialised rows); plain PostgreSQL aggregates the raw rows of the window, which the index
-- (patient_id, metric, measured_at) finds without touching other patients.
DO $$
BEGIN
    IF vaktrom_timescaledb() THEN
        CREATE FUNCTION measurement_buckets(p_patient text, p_metric text, p_width text,
                                            p_from timestamptz, p_to timestamptz)
        RETURNS TABLE (bucket timestamptz, readings bigint, min_value double precision,
                       max_value double precision, mean_value double precision,
                       last_value double precision, last_at timestamptz)
        LANGUAGE plpgsql STABLE AS $f$
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
        $f$;
    ELSE
        CREATE FUNCTION measurement_buckets(p_patient text, p_metric text, p_width text,
                                            p_from timestamptz, p_to timestamptz)
        RETURNS TABLE (bucket timestamptz, readings bigint, min_value double precision,
                       max_value double precision, mean_value double precision,
                       last_value double precision, last_at timestamptz)
        LANGUAGE plpgsql STABLE AS $f$
        DECLARE
            width interval;
        BEGIN
            IF p_width = 'hour' THEN
                width := interval '1 hour';
            ELSIF p_width = 'day' THEN
                width := interval '1 day';
            ELSE
                RAISE EXCEPTION 'bucket width must be hour or day, not %', p_width;
            END IF;
            RETURN QUERY
                SELECT date_bin(width, m.measured_at, timestamptz '2000-01-01 00:00:00+00') AS b,
                       count(*), min(m.value), max(m.value), avg(m.value),
                       (array_agg(m.value ORDER BY m.measured_at DESC))[1], max(m.measured_at)
                FROM measurements m
                WHERE m.patient_id = p_patient AND m.metric = p_metric
                  AND m.measured_at >= p_from AND m.measured_at < p_to
                GROUP BY b
                ORDER BY b;
        END
        $f$;
    END IF;
END
$$;
