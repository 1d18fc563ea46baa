-- The alert lifecycle of a clinical alarm system (issue #27); owner: alerts (alerts/store.py,
-- alerts/escalation.py). The policy and its state diagram: docs/alert-lifecycle.md.
--
-- * An alert that comes back as needing action (a new qualifying version from the monitor after a
--   nurse resolved, claimed or started it, or a worsening) starts a new alarm round: its escalation
--   clock restarts at `rearmed_at` and its steps are taken again, once per round.
-- * Escalation goes on while an alert is claimed but not started (not only while it is new).
-- * An episode the monitor opened and resolved before anyone reviewed it waits in
--   'to_acknowledge' (no response-time clock, no escalation) until a nurse acknowledges it
--   ('acknowledged', with who did it) or claims it to follow up.
-- * Nurses unclaim, reassign and hand over alerts; each is a timeline entry (and an audit entry).

ALTER TABLE alerts
    -- NULL: the clock runs from received_at (the alert's first round)
    ADD COLUMN rearmed_at timestamptz,
    ADD COLUMN alarm_round integer NOT NULL DEFAULT 1 CHECK (alarm_round >= 1);

ALTER TABLE alerts DROP CONSTRAINT alerts_state_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_state_check CHECK (state IN (
    'new', 'claimed', 'in_progress', 'resolved', 'closed', 'to_acknowledge', 'acknowledged'));
ALTER TABLE alerts DROP CONSTRAINT alerts_check;
ALTER TABLE alerts ADD CONSTRAINT alerts_assignee_check
    CHECK ((state IN ('claimed', 'in_progress', 'resolved', 'acknowledged')) = (assignee IS NOT NULL));
ALTER TABLE alerts DROP CONSTRAINT alerts_check2;
ALTER TABLE alerts ADD CONSTRAINT alerts_closed_check
    CHECK ((state IN ('resolved', 'closed', 'acknowledged')) = (closed_at IS NOT NULL));

DROP INDEX alerts_open;
CREATE INDEX alerts_open ON alerts (severity, opened_at)
    WHERE state IN ('new', 'claimed', 'in_progress', 'to_acknowledge');
DROP INDEX alerts_new;
CREATE INDEX alerts_escalating ON alerts (received_at)
    WHERE state IN ('new', 'claimed') AND escalation_step < 3;

ALTER TABLE alert_timeline DROP CONSTRAINT alert_timeline_kind_check;
ALTER TABLE alert_timeline ADD CONSTRAINT alert_timeline_kind_check CHECK (kind IN (
    'opened', 'updated', 'escalated', 'resolved',
    'claimed', 'started', 'completed', 'closed', 'comment', 'escalation', 'notified', 'notify_failed',
    'needs_action', 'resolved_before_review', 'acknowledged', 'unclaimed', 'reassigned', 'handed_over'));

-- One notification per step and target in each alarm round (a second round notifies again).
ALTER TABLE notifications ADD COLUMN alarm_round integer NOT NULL DEFAULT 1 CHECK (alarm_round >= 1);
ALTER TABLE notifications DROP CONSTRAINT notifications_episode_id_step_channel_target_key;
ALTER TABLE notifications ADD CONSTRAINT notifications_round_step_target_key
    UNIQUE (episode_id, alarm_round, step, channel, target);
