-- Questionnaire answers (issue #32): what patients answered on their kit's tablet, beside their
-- measurements.
--
-- owner: streams.archive: answers
--
-- Written only by the archive, from the topic vaktrom.answers.v1 (contracts.QuestionnaireAnswer),
-- in the same transaction as the rest of its batch; read by the console through
-- streams/archive/read.py. One row per answer id: the id is deterministic (contracts.answer_id), so
-- a resend or a record read again after a restart is stored once (ON CONFLICT DO NOTHING).
-- `items` holds the answers as the contract has them: [{"link_id": ..., "code"|"boolean"|"integer": ...}].

CREATE TABLE answers (
    answer_id      text        PRIMARY KEY,
    patient_id     text        NOT NULL,
    kit_id         text        NOT NULL,
    questionnaire  text        NOT NULL,
    version        text        NOT NULL,
    authored_at    timestamptz NOT NULL,
    received_at    timestamptz NOT NULL,
    items          jsonb       NOT NULL,
    score          integer     NOT NULL,
    worsening      text[]      NOT NULL DEFAULT '{}',
    stored_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX answers_by_patient ON answers (patient_id, authored_at DESC);

COMMENT ON TABLE answers IS 'owner: streams.archive';
