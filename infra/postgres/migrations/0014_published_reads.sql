-- What several packages share, and who owns it (issue #30, table ownership; 0013 has the register).
--
-- owner moved: audit_log: alerts -> runtime
-- owner: registry: patient_directory
-- published: registry: patient_directory
--
-- The audit log is one append-only trail across the response centre and the registry, so it is the
-- kernel's (`runtime/audit.py` alone writes and reads it; every stage may import the kernel).
--
-- `patient_directory` is what the registry publishes of its patients for other packages to join
-- on in SQL: a patient's team (access control) and sealed identity (the console unseals it). It is
-- a plain view, which PostgreSQL inlines into the query that uses it (a join that reads no identity
-- column drops the identity table), so the alert queue's plans are those of the joins it replaces.
-- A `-- published:` line lets other packages read a relation; they read nothing else of the owner.
-- The application may only read it: a simple view is updatable, and writes belong to the registry.

CREATE VIEW patient_directory AS
    SELECT p.patient_id, p.team_id, pi.sealed, pi.key_id
    FROM patients p LEFT JOIN patient_identities pi USING (patient_id);
REVOKE ALL ON patient_directory FROM PUBLIC, vaktrom_app;
GRANT SELECT ON patient_directory TO vaktrom_app;

COMMENT ON VIEW patient_directory IS 'owner: registry';
COMMENT ON TABLE audit.audit_log IS 'owner: runtime';
