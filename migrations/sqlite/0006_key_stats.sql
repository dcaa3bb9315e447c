-- Key statistics: verifications per key, UTC day and verdict code.
CREATE TABLE keymeter_key_stats (
    key_id  TEXT NOT NULL,
    day     TEXT NOT NULL,                -- YYYY-MM-DD, UTC
    code    TEXT NOT NULL,                -- verdict code
    count   INTEGER NOT NULL,
    PRIMARY KEY (key_id, day, code)
);
