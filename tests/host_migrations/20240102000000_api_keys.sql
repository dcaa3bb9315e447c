-- The host's own table of the same everyday name keymeter's concept has: keymeter's tables are keymeter_*.
CREATE TABLE api_keys (
    id      INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id),
    label   TEXT NOT NULL
);
