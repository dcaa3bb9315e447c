-- Key statistics: verifications per key, UTC day and verdict code.
CREATE TABLE keymeter_key_stats (
    key_id  TEXT NOT NULL,
    day     DATE NOT NULL,                -- UTC
    code    TEXT NOT NULL,                -- verdict code
    count   BIGINT NOT NULL,
    PRIMARY KEY (key_id, day, code)
);
