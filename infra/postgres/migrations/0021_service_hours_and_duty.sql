-- Service hours, the duty roster and the out-of-hours route (issue #32, item 4).
--
-- owner: alerts: team_service
-- owner: alerts: duty_shifts
--
-- A team's service (`team_service`, one row per team) says when its response centre is staffed
-- (weekly hours in the team's time zone, Norwegian public holidays closed unless told otherwise, and
-- further closed days), where a red finding goes while it is closed (`out_of_hours_route`: an
-- https:// webhook or a mailto: address, for example the municipality's legevakt), what the
-- patient's kit is told in that case, and who is told when a role in an escalation step has nobody
-- on duty (`fallback_route`). The duty roster (`duty_shifts`) says who holds each role when.
-- Configuration is checked by alerts/service_hours.py (overlaps refused, gaps reported) before it
-- is written; the tables only keep what cannot be wrong whatever the code does.
--
-- The alert row records what out-of-hours handling did to it (`after_hours`): 'routed' (a red one
-- sent to the out-of-hours route; it stays in the queue, marked) or 'waiting' (a yellow or info one
-- that waits for opening; its escalation clock starts when the centre opens).

CREATE TABLE team_service (
    team_id             text PRIMARY KEY,
    time_zone           text NOT NULL DEFAULT 'Europe/Oslo',
    -- {"0": [["08:00", "15:30"]], ...}: weekday (0 Monday) -> opening intervals, local time
    weekly              jsonb NOT NULL DEFAULT '{}'::jsonb,
    public_holidays     boolean NOT NULL DEFAULT true,  -- closed on Norwegian public holidays
    closed_dates        date[] NOT NULL DEFAULT '{}',
    out_of_hours_route  text NOT NULL CHECK (out_of_hours_route <> ''),
    out_of_hours_instruction text NOT NULL CHECK (out_of_hours_instruction <> ''),
    fallback_route      text NOT NULL CHECK (fallback_route <> ''),
    required_roles      text[] NOT NULL DEFAULT '{nurse_on_duty,coordinator}',
    updated_at          timestamptz NOT NULL DEFAULT now(),
    updated_by          text
);

CREATE TABLE duty_shifts (
    shift_id    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    team_id     text NOT NULL,
    role        text NOT NULL CHECK (role IN ('nurse_on_duty', 'coordinator', 'on_call_physician')),
    username    text NOT NULL,
    contact     text NOT NULL CHECK (contact <> ''),  -- https:// webhook or mailto: address
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text,
    CHECK (ends_at > starts_at)
);
CREATE INDEX duty_shifts_at ON duty_shifts (team_id, role, starts_at, ends_at);

ALTER TABLE alerts
    ADD COLUMN after_hours text CHECK (after_hours IN ('routed', 'waiting')),
    ADD COLUMN after_hours_route text,
    ADD COLUMN after_hours_round integer;  -- the alarm round it applies to (a later round is handled afresh)
CREATE INDEX alerts_after_hours ON alerts (received_at) WHERE state = 'new' AND after_hours IS NULL;

-- Step 0: the out-of-hours route (steps 1-3 are escalation's).
ALTER TABLE notifications DROP CONSTRAINT notifications_step_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_step_check CHECK (step BETWEEN 0 AND 3);

ALTER TABLE alert_timeline DROP CONSTRAINT alert_timeline_kind_check;
ALTER TABLE alert_timeline ADD CONSTRAINT alert_timeline_kind_check CHECK (kind IN (
    'opened', 'updated', 'escalated', 'resolved',
    'claimed', 'started', 'completed', 'closed', 'comment', 'escalation', 'notified', 'notify_failed',
    'needs_action', 'resolved_before_review', 'acknowledged', 'unclaimed', 'reassigned', 'handed_over',
    'duty_resolved', 'out_of_hours', 'waiting_for_opening', 'service_opened', 'kit_instruction'));

COMMENT ON TABLE team_service IS 'owner: alerts';
COMMENT ON TABLE duty_shifts IS 'owner: alerts';
