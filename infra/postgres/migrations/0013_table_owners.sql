-- Table ownership (issue #30). Every table, view and continuous aggregate has one owning package:
-- the only one whose code writes it. Any other package reads it through the owner's read module
-- (streams/archive/read.py, registry/read.py) or the owner's Kafka topic, and writes it only by
-- calling the owner's functions. tests/unit/test_layout.py reads the `-- owner:` lines of every
-- migration and checks the code against them.
--
-- The register below covers 0001-0012. Those files are recorded with their checksums in
-- schema_migrations, so they cannot be edited to carry the lines themselves; this file names the
-- owners instead, and a new migration names the owner of each table it creates in its own header.
-- Two tables sit in another package's file for history: `teams` and `patients` were created by the
-- console's 0006 before the registry existed (0007 reshaped them); they are the registry's.
-- `ingest` and `streams.monitor` own no table (the bridge reads the registry's kit tables, the
-- monitor keeps its state in Kafka and RocksDB). `schema_migrations` is infra/migrate.py's
-- bookkeeping, not a stage's table.
--
-- owner: streams.archive: measurements
-- owner: streams.archive: rejections
-- owner: streams.archive: archive_policy
-- owner: streams.archive: measurements_hourly
-- owner: streams.archive: measurements_daily
-- owner: streams.archive: quarantine
-- owner: registry: kits
-- owner: registry: device_profiles
-- owner: registry: kit_devices
-- owner: registry: kit_assignments
-- owner: registry: teams
-- owner: registry: patients
-- owner: registry: patient_identities
-- owner: registry: kit_pairings
-- owner: registry: care_plans
-- owner: alerts: alerts
-- owner: alerts: alert_timeline
-- owner: alerts: users
-- owner: alerts: sessions
-- owner: alerts: login_failures
-- owner: alerts: audit_log
-- owner: alerts: notifications
--
-- The same register in the database, for whoever reads the schema with \dt+ or \dv+: each
-- relation's comment names its owner. Nothing else changes; on a database that has the comments
-- already this sets them again.

DO $$
DECLARE
    entry record;
    kind text;
BEGIN
    FOR entry IN SELECT * FROM (VALUES
        ('measurements', 'streams.archive'), ('rejections', 'streams.archive'),
        ('archive_policy', 'streams.archive'), ('measurements_hourly', 'streams.archive'),
        ('measurements_daily', 'streams.archive'), ('quarantine', 'streams.archive'),
        ('kits', 'registry'), ('device_profiles', 'registry'), ('kit_devices', 'registry'),
        ('kit_assignments', 'registry'), ('teams', 'registry'), ('patients', 'registry'),
        ('patient_identities', 'registry'), ('kit_pairings', 'registry'), ('care_plans', 'registry'),
        ('alerts', 'alerts'), ('alert_timeline', 'alerts'), ('users', 'alerts'), ('sessions', 'alerts'),
        ('login_failures', 'alerts'), ('audit.audit_log', 'alerts'), ('notifications', 'alerts')
    ) AS owners (relation, owner)
    LOOP
        SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END
          INTO kind FROM pg_class c WHERE c.oid = to_regclass(entry.relation);
        IF kind IS NULL THEN
            RAISE EXCEPTION 'relation % is in the ownership register but not in the database', entry.relation;
        END IF;
        EXECUTE format('COMMENT ON %s %s IS %L', kind, entry.relation, 'owner: ' || entry.owner);
    END LOOP;
END
$$;
