-- Tenancy (issue #28); owner: registry (registry/kits.py). Every registry object belongs to one
-- team or is explicitly centre-wide, and every operation checks it (docs/access-control.md):
--
-- * patient: its team (patients.team_id, NOT NULL since 0006).
-- * care plan, kit assignment: through their patient or kit.
-- * pairing code: its kit; it also keeps the team of whoever made it, and dies unclaimed when the
--   kit goes to another team's patient (a code team A made for a stock kit must not give team A
--   the credentials of a kit team B's patient now holds).
-- * kit: the team of the patient it is with; unassigned (in stock, retired) it is centre-wide stock,
--   which every kit manager may take from. `kits.team_id` says which, and the database keeps it
--   true: the registry, the cohort loader and a hand-written INSERT all go through the triggers
--   below, so no code path can leave a team-B kit looking like centre stock.
-- * user: its team, or every team when users.team_id is NULL (administrators, centre-wide staff).
-- * API token and browser session: through their user.

ALTER TABLE kits ADD COLUMN team_id text REFERENCES teams (team_id);  -- NULL: centre-wide stock
CREATE INDEX kits_team ON kits (team_id) WHERE team_id IS NOT NULL;
ALTER TABLE kit_pairings ADD COLUMN team_id text REFERENCES teams (team_id);  -- NULL: made centre-wide

UPDATE kits k SET team_id = p.team_id
FROM kit_assignments a JOIN patients p USING (patient_id)
WHERE a.kit_id = k.kit_id AND a.assigned_until IS NULL;

-- The kits whose open assignment changed take the team of the patient they are now with (or none).
CREATE FUNCTION vaktrom_kit_team_from_assignments() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE kits k SET team_id = held.team_id
    FROM (
        SELECT c.kit_id,
               (SELECT p.team_id FROM kit_assignments a JOIN patients p USING (patient_id)
                 WHERE a.kit_id = c.kit_id AND a.assigned_until IS NULL) AS team_id
        FROM (SELECT DISTINCT kit_id FROM changed) c
    ) held
    WHERE k.kit_id = held.kit_id AND k.team_id IS DISTINCT FROM held.team_id;
    RETURN NULL;
END
$$;
-- (A transition table allows one event per trigger, hence two.)
CREATE TRIGGER kit_assignments_team_insert AFTER INSERT ON kit_assignments
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION vaktrom_kit_team_from_assignments();
CREATE TRIGGER kit_assignments_team_update AFTER UPDATE ON kit_assignments
    REFERENCING NEW TABLE AS changed
    FOR EACH STATEMENT EXECUTE FUNCTION vaktrom_kit_team_from_assignments();

-- A patient moved to another team takes the kits they hold along.
CREATE FUNCTION vaktrom_kit_team_from_patient() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE kits k SET team_id = NEW.team_id
    FROM kit_assignments a
    WHERE a.kit_id = k.kit_id AND a.patient_id = NEW.patient_id AND a.assigned_until IS NULL;
    RETURN NULL;
END
$$;
CREATE TRIGGER patients_kit_team AFTER UPDATE OF team_id ON patients
    FOR EACH ROW WHEN (OLD.team_id IS DISTINCT FROM NEW.team_id)
    EXECUTE FUNCTION vaktrom_kit_team_from_patient();
