-- Owner: alerts. A patient moved to another team: the alerts held by someone who does not see that
-- team go back to the queue (they could no longer open them, and the new team could not take them),
-- in the transaction that moves the patient, whichever path moves them (the console, the API, the
-- registry's command line, or SQL). Until now the registry's care-plan change wrote the alert
-- tables itself; this trigger is the response centre's answer to the registry's change, and writes
-- only the response centre's tables. The clock rule is `alerts.handoff.unclaim`'s: a started alert
-- rearms its clock and restarts escalation; a resolved episode waits to be acknowledged.
--
-- The timeline names who moved the patient: the registry sets `vaktrom.actor` for its transaction
-- (set_config(..., true)); a move made another way has no actor (NULL, as for the pipeline).
-- Creates no table.

CREATE FUNCTION alerts_release_on_patient_move() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    WITH held AS (
        SELECT a.episode_id, a.assignee, a.state FROM alerts a
        WHERE a.patient_id = NEW.patient_id AND a.state IN ('claimed', 'in_progress')
          AND NOT EXISTS (SELECT 1 FROM users u WHERE u.username = a.assignee AND u.active
                          AND u.role <> 'admin' AND (u.team_id IS NULL OR u.team_id = NEW.team_id))
        FOR UPDATE OF a
    ), released AS (
        UPDATE alerts a SET
            rearmed_at = CASE WHEN a.state = 'in_progress' THEN now() ELSE a.rearmed_at END,
            escalation_step = CASE WHEN a.state = 'in_progress' THEN 0 ELSE a.escalation_step END,
            alarm_round = CASE WHEN a.state = 'in_progress' THEN a.alarm_round + 1 ELSE a.alarm_round END,
            state = CASE WHEN a.episode_resolved_at IS NULL THEN 'new' ELSE 'to_acknowledge' END,
            assignee = NULL, claimed_at = NULL, updated_at = now()
        FROM held WHERE a.episode_id = held.episode_id
        RETURNING held.episode_id, held.assignee, held.state
    )
    INSERT INTO alert_timeline (episode_id, kind, actor, detail)
    SELECT r.episode_id, 'unclaimed', nullif(current_setting('vaktrom.actor', true), ''),
           jsonb_build_object('from', r.assignee, 'was', r.state,
                              'why', format('the patient moved to team %s', NEW.team_id))
    FROM released r ORDER BY r.episode_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER alerts_follow_patient_moves AFTER UPDATE OF team_id ON patients
    FOR EACH ROW WHEN (OLD.team_id IS DISTINCT FROM NEW.team_id)
    EXECUTE FUNCTION alerts_release_on_patient_move();
