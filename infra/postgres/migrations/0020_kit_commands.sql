-- Messages, reminders and instructions sent to patients' kits, and the kits' acknowledgements
-- (issue #32, item 3). Owner: alerts.
--
-- owner: alerts: kit_commands
--
-- A row is written when a nurse (or the out-of-hours route) queues a message (state `queued`,
-- `alerts.kit_messages.queue_message`), marked `sent` once Kafka holds it (the relay job), and
-- `shown` when the kit's acknowledgement arrives. The monitor's reminders reach the same table from
-- the commands topic: they are stored when their acknowledgement arrives, with `origin = 'monitor'`.
-- Kit text is shown to the patient, never logged: it may say something clinical.

CREATE TABLE kit_commands (
    command_id    text PRIMARY KEY CHECK (command_id ~ '^[0-9a-f]{32}$'),
    patient_id    text NOT NULL,
    episode_id    text REFERENCES alerts (episode_id) ON DELETE SET NULL,
    kind          text NOT NULL CHECK (kind IN ('message', 'reminder', 'instruction')),
    body          text NOT NULL CHECK (length(body) BETWEEN 1 AND 500),
    metric        text,
    origin        text NOT NULL CHECK (origin IN ('alerts', 'monitor')),
    requested_by  text,            -- the user, or NULL for the pipeline
    reason        text NOT NULL DEFAULT '',
    queued_at     timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    sent_at       timestamptz,     -- Kafka holds it (the bridge relays it to the kit)
    kit_id        text,            -- the kit that acknowledged it
    shown_at      timestamptz,     -- the kit's clock when it showed the command
    read_at       timestamptz,
    dismissed_at  timestamptz,
    acked_at      timestamptz      -- when the acknowledgement reached the bridge
);
CREATE INDEX kit_commands_patient ON kit_commands (patient_id, queued_at DESC);
CREATE INDEX kit_commands_episode ON kit_commands (episode_id) WHERE episode_id IS NOT NULL;
CREATE INDEX kit_commands_unsent ON kit_commands (queued_at) WHERE sent_at IS NULL;

COMMENT ON TABLE kit_commands IS 'owner: alerts';
