-- The application's audit entries take their time and number from the database, and it no longer
-- writes the migrations' bookkeeping (issue #28, finding 4). Owner: alerts.
--
-- 0011 let vaktrom_app insert whole rows, so a compromised stage could still write an entry dated
-- last year, or slot one into a gap of `entry_id` (OVERRIDING SYSTEM VALUE), and make it look as if
-- it had always been there. Now it may name only what an entry says; `at` (clock_timestamp()) and
-- `entry_id` are the database's.
REVOKE INSERT ON audit.audit_log FROM vaktrom_app;
GRANT INSERT (actor, action, target, patient_id, ip, user_agent, detail) ON audit.audit_log TO vaktrom_app;

-- vaktrom_configure_archive() runs as its owner. Its fixed search_path ("$user", public) left the
-- caller's temporary schema searched first for tables, so the application could put a temporary
-- `archive_policy` or `measurements` in front of the real ones; pg_temp goes last now.
DO $$
BEGIN
    EXECUTE format(
        'ALTER FUNCTION vaktrom_configure_archive(interval, interval) SET search_path = %I, pg_temp',
        current_schema()
    );
END
$$;

-- 0011's grant on every table of the schema took in the migrations' own bookkeeping: the application
-- could record a migration not yet shipped as applied (a later fix would then never run) or remove
-- one's row. Only the migrating owner writes it.
REVOKE INSERT, UPDATE, DELETE ON schema_migrations FROM vaktrom_app;
