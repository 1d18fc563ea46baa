-- The response centre's alert store (issue #7): one row per alert episode, fed from the monitor's
-- alert topic, and its timeline. Events are applied idempotently by (episode_id, version): the
-- row keeps the newest version, a replayed or older one changes nothing, and every version is
-- recorded once in the timeline. Nurses' actions move the row through the workflow
--     new -> claimed (one nurse) -> in_progress -> resolved (with a resolution code)
-- or new -> closed when an info episode resolves in the monitor before anyone claimed it.

CREATE TABLE alerts (
    episode_id      text PRIMARY KEY CHECK (episode_id ~ '^[0-9a-f]{32}$'),
    version         integer NOT NULL CHECK (version >= 1),
    patient_id      text NOT NULL,
    rule_id         text NOT NULL,
    rule_source     text NOT NULL,
    metric          text,
    severity        text NOT NULL CHECK (severity IN ('red', 'yellow', 'info')),
    explanation     text NOT NULL,
    opened_at       timestamptz NOT NULL,
    last_seen_at    timestamptz NOT NULL,
    episode_resolved_at timestamptz,  -- the monitor saw the condition clear
    count           integer NOT NULL CHECK (count >= 1),
    late            boolean NOT NULL DEFAULT false,
    event           jsonb NOT NULL,   -- the newest version as received: evidence, baseline, threshold
    state           text NOT NULL DEFAULT 'new'
                    CHECK (state IN ('new', 'claimed', 'in_progress', 'resolved', 'closed')),
    assignee        text,
    claimed_at      timestamptz,
    resolution      text CHECK (resolution IN (
                        'contacted_no_action', 'medication_adjusted', 'referred_to_gp',
                        'referred_to_emergency', 'false_reading', 'other')),
    resolution_note text,
    closed_at       timestamptz,
    received_at     timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((state IN ('claimed', 'in_progress', 'resolved')) = (assignee IS NOT NULL)),
    CHECK ((state = 'resolved') = (resolution IS NOT NULL)),
    CHECK ((state IN ('resolved', 'closed')) = (closed_at IS NOT NULL))
);
-- The queue: what is still open, by severity and age.
CREATE INDEX alerts_open ON alerts (severity, opened_at) WHERE state IN ('new', 'claimed', 'in_progress');
CREATE INDEX alerts_patient ON alerts (patient_id, opened_at DESC);
CREATE INDEX alerts_assignee ON alerts (assignee) WHERE state IN ('claimed', 'in_progress');

CREATE TABLE alert_timeline (
    entry_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    episode_id  text NOT NULL REFERENCES alerts (episode_id) ON DELETE CASCADE,
    at          timestamptz NOT NULL DEFAULT now(),
    kind        text NOT NULL CHECK (kind IN (
                    'opened', 'updated', 'escalated', 'resolved',        -- the monitor's events
                    'claimed', 'started', 'completed', 'closed', 'comment')),  -- people and rules here
    version     integer,  -- the episode version, for the monitor's events
    actor       text,     -- the user; NULL for the pipeline
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb,
    CHECK ((kind IN ('opened', 'updated', 'escalated', 'resolved')) = (version IS NOT NULL))
);
-- Each version of an episode is recorded once, however often Kafka delivers it.
CREATE UNIQUE INDEX alert_timeline_version ON alert_timeline (episode_id, version) WHERE version IS NOT NULL;
CREATE INDEX alert_timeline_episode ON alert_timeline (episode_id, at);
