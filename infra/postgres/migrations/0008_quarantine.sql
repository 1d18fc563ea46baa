-- The quarantine (issue #27): records a stage could not handle and set aside so that it could move
-- on (a record that does not decode, or one the database refuses as data).
--
-- Owner: streams/archive. It is the only writer: it stores the records it sets aside itself in the
-- same transaction as its batch, and every other stage's from the topic vaktrom.quarantine.v1
-- (contracts.Quarantined). The response-centre service reads it for the administrators' console.
--
-- `raw` is bytea, so a row can hold any bytes the record held (NUL, invalid UTF-8): storing a
-- quarantined record can never fail on its data. The text columns are cleaned before they get here.
-- One row per (stage, topic, partition, offset): a record set aside twice (read again after a
-- restart) is stored once.

CREATE TABLE quarantine (
    quarantine_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stage           text        NOT NULL,
    reason          text        NOT NULL,
    detail          text        NOT NULL DEFAULT '',
    source_topic    text        NOT NULL,
    source_partition integer    NOT NULL,
    source_offset   bigint      NOT NULL,
    raw             bytea       NOT NULL,
    raw_size        integer     NOT NULL,
    quarantined_at  timestamptz NOT NULL,
    stored_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stage, source_topic, source_partition, source_offset)
);
CREATE INDEX quarantine_recent ON quarantine (quarantined_at DESC);
