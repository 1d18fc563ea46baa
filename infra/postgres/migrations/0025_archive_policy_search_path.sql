-- vaktrom_configure_archive() finds TimescaleDB's policy functions wherever the extension lives.
-- Owner: archive.
--
-- 0012 fixed the function's search_path to the migrated schema, then pg_temp. TimescaleDB's
-- functions (add_compression_policy, remove_retention_policy, ...) live in the extension's schema,
-- which that path leaves out when Vaktrom's tables are in another schema than the extension's (a
-- hospital database giving Vaktrom a schema of its own; the benchmarks' scratch schemas): the
-- archive then stopped at start with "function remove_compression_policy(...) does not exist".
-- The extension's schema now comes after the tables' schema; pg_temp stays last, so a caller's
-- temporary tables still cannot stand in for the real ones.
DO $$
DECLARE
    ext text := (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
                 WHERE e.extname = 'timescaledb');
BEGIN
    IF ext IS NOT NULL AND ext <> current_schema() THEN
        EXECUTE format(
            'ALTER FUNCTION vaktrom_configure_archive(interval, interval) SET search_path = %I, %I, pg_temp',
            current_schema(), ext
        );
    END IF;
END
$$;
