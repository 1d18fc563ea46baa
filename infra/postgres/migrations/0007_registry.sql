-- The registry (issue #8): who the patients are (sealed), which team and municipality follows them,
-- one-time pairing codes for kits, and versioned care plans with who changed what, when and why.
--
-- Names, birth dates and national identity numbers never sit here in plain text: the registry
-- seals them with AES-256-GCM under a key the database never sees (VAKTROM_IDENTITY_KEY). A copy
-- of the database, a backup or a replica shows pseudonyms only.

-- A response centre serves several municipalities; a team follows patients from some of them.
ALTER TABLE teams ADD COLUMN municipalities text[] NOT NULL DEFAULT '{}';

-- The console's plain-text name of 0006 gives way to the sealed identity below.
ALTER TABLE patients DROP COLUMN display_name;
ALTER TABLE patients
    ADD COLUMN condition text CHECK (condition IN ('heart_failure', 'copd', 'diabetes', 'infection_watch')),
    ADD COLUMN municipality text,
    ADD COLUMN enrolled_by text,
    ADD COLUMN discharged_at timestamptz;

CREATE TABLE patient_identities (
    patient_id  text PRIMARY KEY REFERENCES patients (patient_id),
    sealed      bytea NOT NULL,   -- nonce || AES-256-GCM({name, birth_date, national_id}), pseudonym as associated data
    key_id      text NOT NULL,    -- which key sealed it, so keys can be rotated
    nin_digest  bytea UNIQUE CHECK (length(nin_digest) = 32),  -- keyed HMAC: finds a second enrolment, reveals no number
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Kits: when their broker identity was made, and when their credentials were last handed out.
ALTER TABLE kits
    ADD COLUMN broker_provisioned_at timestamptz,
    ADD COLUMN credentials_issued_at timestamptz;

-- A one-time pairing code lets a kit (or the patient's phone) claim its broker credentials once.
-- Only the SHA-256 of the code is kept.
CREATE TABLE kit_pairings (
    code_hash   bytea PRIMARY KEY CHECK (length(code_hash) = 32),
    kit_id      text NOT NULL REFERENCES kits (kit_id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text NOT NULL,
    expires_at  timestamptz NOT NULL,
    claimed_at  timestamptz,
    claimed_ip  inet
);
CREATE INDEX kit_pairings_kit ON kit_pairings (kit_id);

-- Every accepted version of a patient's care plan. `document` is the CarePlan contract exactly as
-- published to the compacted care-plan topic; `published_at` is set once Kafka acknowledged it.
CREATE TABLE care_plans (
    patient_id  text NOT NULL REFERENCES patients (patient_id),
    version     integer NOT NULL CHECK (version >= 1),
    document    jsonb NOT NULL,
    changed_at  timestamptz NOT NULL,
    changed_by  text NOT NULL,
    reason      text NOT NULL CHECK (length(reason) > 0),
    published_at timestamptz,
    PRIMARY KEY (patient_id, version)
);
CREATE INDEX care_plans_unpublished ON care_plans (changed_at) WHERE published_at IS NULL;

-- A version, once accepted, is history: only its publication may be recorded afterwards.
CREATE FUNCTION vaktrom_care_plans_history() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND (NEW.patient_id, NEW.version, NEW.document, NEW.changed_at, NEW.changed_by, NEW.reason)
        IS NOT DISTINCT FROM (OLD.patient_id, OLD.version, OLD.document, OLD.changed_at, OLD.changed_by, OLD.reason)
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'care plan versions are history: % is refused (write a new version)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER care_plans_history BEFORE UPDATE OR DELETE ON care_plans
    FOR EACH ROW EXECUTE FUNCTION vaktrom_care_plans_history();
