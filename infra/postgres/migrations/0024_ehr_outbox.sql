-- Documentation into the patient record (issue #33, item 2). Owner: alerts.
--
-- owner: alerts: ehr_outbox
--
-- One row per resolution of an alert while an EHR endpoint is configured, written in the same
-- transaction as the resolution (`alerts.store.complete`), so a crash never loses a document. The
-- body is the exact FHIR document (a Bundle of type `document`) that is sent, with its Ed25519
-- signature; `document_id` is its Bundle.identifier, which the receiver deduplicates on. The
-- delivery worker (`alerts.workers.ehr_outbox`) sets `delivered_at` once the endpoint answers 2xx,
-- `attempts`/`last_error`/`next_attempt_at` on a failed attempt, and `given_up_at` (with the reason in
-- `last_error`) after a 4xx answer or when `give_up_at` has passed: the "not delivered" state a
-- manager sees. A delivered row is never taken again.

CREATE TABLE ehr_outbox (
    outbox_id        bigserial PRIMARY KEY,
    document_id      uuid NOT NULL UNIQUE,
    episode_id       text NOT NULL REFERENCES alerts (episode_id) ON DELETE CASCADE,
    patient_id       text NOT NULL,
    resolved_by      text NOT NULL,
    body             bytea NOT NULL,
    signature        text NOT NULL,
    key_id           text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    give_up_at       timestamptz NOT NULL,
    attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error       text,
    last_status      integer,
    delivered_at     timestamptz,
    given_up_at      timestamptz,
    CHECK (delivered_at IS NULL OR given_up_at IS NULL)
);
CREATE INDEX ehr_outbox_due ON ehr_outbox (next_attempt_at) WHERE delivered_at IS NULL AND given_up_at IS NULL;
CREATE INDEX ehr_outbox_episode ON ehr_outbox (episode_id);

ALTER TABLE alert_timeline DROP CONSTRAINT alert_timeline_kind_check;
ALTER TABLE alert_timeline ADD CONSTRAINT alert_timeline_kind_check CHECK (kind IN (
    'opened', 'updated', 'escalated', 'resolved',
    'claimed', 'started', 'completed', 'closed', 'comment', 'escalation', 'notified', 'notify_failed',
    'needs_action', 'resolved_before_review', 'acknowledged', 'unclaimed', 'reassigned', 'handed_over',
    'duty_resolved', 'out_of_hours', 'waiting_for_opening', 'service_opened', 'kit_instruction',
    'record_queued', 'record_attempt_failed', 'record_delivered', 'record_given_up'));

COMMENT ON TABLE ehr_outbox IS 'owner: alerts';
