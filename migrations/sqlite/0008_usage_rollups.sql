-- Report rollups, kept in each event's transaction: SQLite cannot sum decimals exactly, so reports read these
-- (and only the events at a range's ragged edges) instead of every event. Amounts are exact decimal strings.
-- keymeter fills both from the events already stored when this migration runs.

-- Totals per 15-minute UTC bucket: calendar reports in any time zone.
CREATE TABLE keymeter_usage_timeline (
    start_at       INTEGER PRIMARY KEY NOT NULL,
    cost           TEXT NOT NULL,
    events         INTEGER NOT NULL,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL
);

-- Totals per UTC day and per UTC month and per (owner, org, key, model): reports by a field, with field filters.
-- An absent org or key id is stored as '' (names are never empty).
CREATE TABLE keymeter_usage_rollups (
    level          TEXT NOT NULL CHECK (level IN ('day', 'month')),
    start_at       INTEGER NOT NULL,
    end_at         INTEGER NOT NULL,
    owner          TEXT NOT NULL,
    org            TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    model          TEXT NOT NULL,
    cost           TEXT NOT NULL,
    events         INTEGER NOT NULL,
    input_tokens   INTEGER NOT NULL,
    output_tokens  INTEGER NOT NULL,
    PRIMARY KEY (level, start_at, owner, org, key_id, model)
) WITHOUT ROWID;
CREATE INDEX keymeter_usage_rollups_owner ON keymeter_usage_rollups (owner, level, start_at);
CREATE INDEX keymeter_usage_rollups_org ON keymeter_usage_rollups (org, level, start_at);
CREATE INDEX keymeter_usage_rollups_key ON keymeter_usage_rollups (key_id, level, start_at);
