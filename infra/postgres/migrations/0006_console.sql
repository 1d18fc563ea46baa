-- The response centre's console (issue #7): teams, the patients they follow, the staff who log in,
-- their sessions, the append-only audit log, the notification outbox of escalation, and a NOTIFY
-- on every change of the queue so each service instance can push it to its browsers at once.
--
-- `patients` holds what the console shows of a patient; the pipeline itself only ever carries the
-- pseudonym. Issue #8 (enrolment) writes these rows and adds what it protects at rest.

CREATE TABLE teams (
    team_id     text PRIMARY KEY CHECK (team_id ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE patients (
    patient_id  text PRIMARY KEY CHECK (patient_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$'),
    team_id     text NOT NULL REFERENCES teams (team_id),
    display_name text,   -- shown in the console only, never in topics, logs or metrics
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX patients_team ON patients (team_id);

CREATE TABLE users (
    username    text PRIMARY KEY CHECK (username ~ '^[a-z0-9][a-z0-9._-]{1,63}$'),
    display_name text NOT NULL,
    role        text NOT NULL CHECK (role IN ('nurse', 'coordinator', 'physician', 'admin')),
    team_id     text REFERENCES teams (team_id),  -- NULL: every team of the centre
    email       text,
    password_hash text NOT NULL,                   -- Argon2id, in its own encoded form
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    password_changed_at timestamptz NOT NULL DEFAULT now()
);

-- A browser session or an API token. Only the SHA-256 of the secret is kept: a copy of this table
-- does not let anyone log in.
CREATE TABLE sessions (
    token_hash  bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    username    text NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('browser', 'api')),
    csrf_token  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    ip          inet
);
CREATE INDEX sessions_user ON sessions (username);

-- Failed logins, for rate limiting by account and by address.
CREATE TABLE login_failures (
    username    text NOT NULL,
    ip          inet,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_user ON login_failures (username, at);
CREATE INDEX login_failures_ip ON login_failures (ip, at);

-- Who saw or did what, when, from where. Rows are only ever added: the triggers refuse UPDATE,
-- DELETE and TRUNCATE for everyone, the application included.
CREATE TABLE audit_log (
    entry_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor       text,   -- the username; NULL when nobody is logged in (a failed login)
    action      text NOT NULL,
    target      text,   -- an episode id, a username, ...
    patient_id  text,   -- whose data was seen or touched (the pseudonym)
    ip          inet,
    user_agent  text,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_actor ON audit_log (actor, at);
CREATE INDEX audit_log_patient ON audit_log (patient_id, at) WHERE patient_id IS NOT NULL;

CREATE FUNCTION vaktrom_audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION vaktrom_audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION vaktrom_audit_log_append_only();

-- The outbox of escalation notifications: written in the transaction that takes the step, sent
-- afterwards with retries, so a step is never lost and never sent twice to the same target.
CREATE TABLE notifications (
    notification_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    episode_id  text NOT NULL REFERENCES alerts (episode_id) ON DELETE CASCADE,
    step        integer NOT NULL CHECK (step BETWEEN 1 AND 3),
    channel     text NOT NULL CHECK (channel IN ('webhook', 'email')),
    target      text NOT NULL,  -- a URL or an e-mail address
    created_at  timestamptz NOT NULL DEFAULT now(),
    attempts    integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz,
    failed_at   timestamptz,    -- gave up after the last attempt
    last_error  text,
    UNIQUE (episode_id, step, channel, target)
);
CREATE INDEX notifications_due ON notifications (next_attempt_at) WHERE sent_at IS NULL AND failed_at IS NULL;

ALTER TABLE alert_timeline DROP CONSTRAINT alert_timeline_kind_check;
ALTER TABLE alert_timeline ADD CONSTRAINT alert_timeline_kind_check CHECK (kind IN (
    'opened', 'updated', 'escalated', 'resolved',
    'claimed', 'started', 'completed', 'closed', 'comment', 'escalation', 'notified', 'notify_failed'));

-- The console's live queue: one notification per transaction that changed alerts (PostgreSQL
-- folds identical notifications of one transaction into one).
CREATE FUNCTION vaktrom_alerts_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('vaktrom_alerts', '');
    RETURN NULL;
END
$$;
CREATE TRIGGER alerts_changed AFTER INSERT OR UPDATE ON alerts
    FOR EACH STATEMENT EXECUTE FUNCTION vaktrom_alerts_changed();
CREATE TRIGGER alert_timeline_changed AFTER INSERT ON alert_timeline
    FOR EACH STATEMENT EXECUTE FUNCTION vaktrom_alerts_changed();
