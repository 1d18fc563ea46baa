-- Compression that pays at home-monitoring rates (issue #31). Creates no table; measurements stays
-- streams.archive's.
--
-- 0003 segmented compressed chunks by patient and metric. A kit sends one to four readings of a
-- metric a day, so a 7-day chunk holds 7 to 28 rows per segment: each compressed batch carried
-- more bookkeeping than data, and 90 days of a 5,000-patient cohort shrank 1.9x in all
-- (bench/archive_storage.py). Segmenting by patient alone, ordered by metric and time, puts all of
-- a patient's metrics in one batch, and rolling four 7-day chunks into one when they are
-- compressed gives about a hundred rows per batch. The reads still find a patient's rows by the
-- segment; the metric, the first order column, narrows the batch by its min/max metadata.
-- Chunks compressed before keep their settings; later ones get these. Plain PostgreSQL: nothing.

DO $$
BEGIN
    IF vaktrom_archive_mode() = 'timescaledb' THEN
        ALTER TABLE measurements SET (
            timescaledb.compress_segmentby = 'patient_id',
            timescaledb.compress_orderby = 'metric, measured_at DESC',
            timescaledb.compress_chunk_time_interval = '28 days'
        );
    END IF;
END
$$;
