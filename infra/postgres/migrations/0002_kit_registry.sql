-- The kit registry the bridge reads: which kits exist, which devices they hold, and which patient
-- (by pseudonym) had a kit when. A reading is attributed to the patient whose assignment covers
-- its measured time, so a kit handed on to the next patient never mixes two records.
-- Issue #8 (enrolment and provisioning) writes these tables and adds the people behind the
-- pseudonyms; the bridge only reads them, caches them and refreshes on NOTIFY vaktrom_registry.

CREATE EXTENSION IF NOT EXISTS btree_gist;  -- trusted since PostgreSQL 13: the owner may create it

CREATE TABLE kits (
    kit_id      text PRIMARY KEY CHECK (kit_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    model       text,
    state       text NOT NULL DEFAULT 'in_stock' CHECK (state IN ('in_stock', 'assigned', 'retired')),
    retired_at  timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((state = 'retired') = (retired_at IS NOT NULL))
);

-- What a device model can measure, where it narrows the plausibility range of CLINICAL_RULES.md
-- (a home scale that tops out at 180 kg). Values in the metric's canonical unit.
CREATE TABLE device_profiles (
    profile     text NOT NULL,
    metric      text NOT NULL,
    low         double precision NOT NULL,
    high        double precision NOT NULL,
    PRIMARY KEY (profile, metric),
    CHECK (low <= high)
);

CREATE TABLE kit_devices (
    device_id   text PRIMARY KEY CHECK (device_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    kit_id      text NOT NULL REFERENCES kits (kit_id),
    kind        text NOT NULL,
    profile     text,
    added_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX kit_devices_kit ON kit_devices (kit_id);

CREATE TABLE kit_assignments (
    kit_id          text NOT NULL REFERENCES kits (kit_id),
    patient_id      text NOT NULL CHECK (patient_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    assigned_from   timestamptz NOT NULL,
    assigned_until  timestamptz,  -- NULL: still with the patient
    PRIMARY KEY (kit_id, assigned_from),
    CHECK (assigned_until IS NULL OR assigned_until > assigned_from),
    -- one patient per kit at any moment
    EXCLUDE USING gist (kit_id WITH =, tstzrange(assigned_from, assigned_until) WITH &&)
);
CREATE INDEX kit_assignments_patient ON kit_assignments (patient_id);

-- Any change tells listening bridges to reload at once (they also reload on a timer).
CREATE FUNCTION vaktrom_registry_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('vaktrom_registry', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

CREATE TRIGGER kits_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON kits
    FOR EACH STATEMENT EXECUTE FUNCTION vaktrom_registry_changed();
CREATE TRIGGER device_profiles_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON device_profiles
    FOR EACH STATEMENT EXECUTE FUNCTION vaktrom_registry_changed();
CREATE TRIGGER kit_devices_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON kit_devices
    FOR EACH STATEMENT EXECUTE FUNCTION vaktrom_registry_changed();
CREATE TRIGGER kit_assignments_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON kit_assignments
    FOR EACH STATEMENT EXECUTE FUNCTION vaktrom_registry_changed();
