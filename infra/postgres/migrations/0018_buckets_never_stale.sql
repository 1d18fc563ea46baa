-- The aggregates' readers answer from the raw rows where an aggregate is behind (issue #31).
-- Creates no table; measurement_buckets() stays streams.archive's.
--
-- A continuous aggregate computes buckets above its watermark from the raw rows (real-time
-- aggregation) but serves the buckets below it as last materialised. Rows written below the
-- watermark (a kit that was offline for a day, an import, a test with readings of last year) are
-- logged as invalidations and reach the aggregate at its next refresh: within the hour for the
-- last 40 days, never for older ones. Until then the aggregate would miss them, which the trend
-- charts and the care-plan proposals would show. So on TimescaleDB measurement_buckets() first
-- asks TimescaleDB's invalidation logs whether anything in the window changed since the last
-- refresh, and aggregates the raw rows of that window when it did (as on plain PostgreSQL; the
-- compressed chunks are segmented by patient, so that stays one patient's rows). Both paths give
-- a bucket every row measured in it, as the aggregate does: a window [from, to) returns the
-- buckets that start in it. Plain PostgreSQL keeps 0003's function.

DO $$
BEGIN
    IF vaktrom_archive_mode() <> 'timescaledb' THEN
        RETURN;
    END IF;
    EXECUTE $q$
        CREATE OR REPLACE FUNCTION measurement_buckets(p_patient text, p_metric text, p_width text,
                                                       p_from timestamptz, p_to timestamptz)
        RETURNS TABLE (bucket timestamptz, readings bigint, min_value double precision,
                       max_value double precision, mean_value double precision,
                       last_value double precision, last_at timestamptz)
        LANGUAGE plpgsql STABLE AS $b$
        DECLARE
            width interval;
            aggregate text;
            stale boolean;
            -- TimescaleDB logs times as microseconds since the Unix epoch
            lo bigint := (extract(epoch FROM p_from) * 1000000)::bigint;
            hi bigint;
        BEGIN
            IF p_width = 'hour' THEN
                width := interval '1 hour';
                aggregate := 'measurements_hourly';
            ELSIF p_width = 'day' THEN
                width := interval '1 day';
                aggregate := 'measurements_daily';
            ELSE
                RAISE EXCEPTION 'bucket width must be hour or day, not %', p_width;
            END IF;
            hi := (extract(epoch FROM p_to + width) * 1000000)::bigint;
            SELECT EXISTS (
                       SELECT 1 FROM _timescaledb_catalog.continuous_agg ca
                       JOIN _timescaledb_catalog.continuous_aggs_hypertable_invalidation_log h
                         ON h.hypertable_id = ca.raw_hypertable_id
                       WHERE ca.user_view_schema = current_schema() AND ca.user_view_name = aggregate
                         AND h.lowest_modified_value < hi AND h.greatest_modified_value >= lo)
                OR EXISTS (
                       SELECT 1 FROM _timescaledb_catalog.continuous_agg ca
                       JOIN _timescaledb_catalog.continuous_aggs_materialization_invalidation_log m
                         ON m.materialization_id = ca.mat_hypertable_id
                       WHERE ca.user_view_schema = current_schema() AND ca.user_view_name = aggregate
                         AND m.lowest_modified_value
                             < least(hi, _timescaledb_functions.cagg_watermark(ca.mat_hypertable_id))
                         AND m.greatest_modified_value >= lo)
              INTO stale;
            IF stale THEN
                RETURN QUERY
                    SELECT date_bin(width, m.measured_at, timestamptz '2000-01-01 00:00:00+00') AS b,
                           count(*), min(m.value), max(m.value), avg(m.value),
                           (array_agg(m.value ORDER BY m.measured_at DESC))[1], max(m.measured_at)
                    FROM measurements m
                    WHERE m.patient_id = p_patient AND m.metric = p_metric
                      AND m.measured_at >= p_from AND m.measured_at < p_to + width
                      AND date_bin(width, m.measured_at, timestamptz '2000-01-01 00:00:00+00') < p_to
                    GROUP BY b
                    ORDER BY b;
            ELSIF p_width = 'hour' THEN
                RETURN QUERY SELECT h.bucket, h.readings, h.min_value, h.max_value, h.mean_value,
                                    h.last_value, h.last_at
                             FROM measurements_hourly h
                             WHERE h.patient_id = p_patient AND h.metric = p_metric
                               AND h.bucket >= p_from AND h.bucket < p_to
                             ORDER BY h.bucket;
            ELSE
                RETURN QUERY SELECT d.bucket, d.readings, d.min_value, d.max_value, d.mean_value,
                                    d.last_value, d.last_at
                             FROM measurements_daily d
                             WHERE d.patient_id = p_patient AND d.metric = p_metric
                               AND d.bucket >= p_from AND d.bucket < p_to
                             ORDER BY d.bucket;
            END IF;
        END
        $b$
    $q$;
END
$$;
