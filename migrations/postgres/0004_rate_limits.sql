-- Rate limits: each scope's quotas, and each bucket's state (its theoretical arrival time, GCRA).
CREATE TABLE keymeter_limits (
    scope_kind  TEXT NOT NULL CHECK (scope_kind IN ('key', 'owner', 'org')),
    scope_id    TEXT NOT NULL,
    requests    TEXT NOT NULL,            -- JSON array of "N/PERIOD"
    tokens      TEXT NOT NULL,            -- JSON array of "N/PERIOD"
    PRIMARY KEY (scope_kind, scope_id)
);

CREATE TABLE keymeter_rate_buckets (
    bucket  TEXT PRIMARY KEY,             -- scope:id:kind:quota
    tat     BIGINT NOT NULL               -- microseconds since the Unix epoch
);
