-- Escalation of unanswered alerts (issue #7). Each severity has a response-time target (service
-- settings); an alert still new when its target passes is escalated step by step: 1 re-notify the
-- team, 2 the coordinator on duty, 3 the on-call physician, step k due k targets after the alert
-- reached the centre. The step reached lives on the row, so escalation survives restarts, and
-- several service instances share the work with FOR UPDATE SKIP LOCKED plus an update
-- conditional on the step: no step fires twice. Due times are computed from the current targets,
-- so a changed target applies at once.

ALTER TABLE alerts
    ADD COLUMN escalation_step integer NOT NULL DEFAULT 0 CHECK (escalation_step BETWEEN 0 AND 3);

-- Escalations the centre raised ('escalated' is the monitor's: the condition worsened).
ALTER TABLE alert_timeline DROP CONSTRAINT alert_timeline_kind_check;
ALTER TABLE alert_timeline ADD CONSTRAINT alert_timeline_kind_check CHECK (kind IN (
    'opened', 'updated', 'escalated', 'resolved',
    'claimed', 'started', 'completed', 'closed', 'comment', 'escalation'));

CREATE INDEX alerts_new ON alerts (received_at) WHERE state = 'new' AND escalation_step < 3;
