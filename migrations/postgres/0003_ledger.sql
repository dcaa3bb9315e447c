-- Usage events, budgets, spend counters and reservations. Amounts are exact NUMERIC.
CREATE TABLE keymeter_usage_events (
    event_id           TEXT PRIMARY KEY,
    request_id         TEXT NOT NULL UNIQUE,       -- the idempotency key
    at                 TIMESTAMPTZ NOT NULL,
    key_id             TEXT,
    owner              TEXT NOT NULL,
    org                TEXT,
    provider           TEXT NOT NULL,
    model              TEXT NOT NULL,
    usage              TEXT NOT NULL,              -- canonical usage, JSON
    input_tokens       BIGINT NOT NULL,            -- prompt-side tokens, for reports
    output_tokens      BIGINT NOT NULL,            -- output-side tokens, for reports
    cost               NUMERIC NOT NULL,
    credential_source  TEXT
);
CREATE INDEX keymeter_usage_events_at ON keymeter_usage_events (at);
CREATE INDEX keymeter_usage_events_owner ON keymeter_usage_events (owner, at);
CREATE INDEX keymeter_usage_events_org ON keymeter_usage_events (org, at);
CREATE INDEX keymeter_usage_events_key ON keymeter_usage_events (key_id, at);

CREATE TABLE keymeter_budgets (
    scope_kind   TEXT NOT NULL CHECK (scope_kind IN ('key', 'owner', 'org')),
    scope_id     TEXT NOT NULL,
    limit_amount NUMERIC NOT NULL,
    soft_limit   NUMERIC,
    period       TEXT NOT NULL CHECK (period IN ('daily', 'weekly', 'monthly', 'total')),
    tz           TEXT NOT NULL,
    PRIMARY KEY (scope_kind, scope_id)
);

-- Settled spend per budget and period, kept in step with usage_events inside the same transactions.
CREATE TABLE keymeter_budget_spend (
    scope_kind   TEXT NOT NULL,
    scope_id     TEXT NOT NULL,
    period_start TIMESTAMPTZ NOT NULL,
    spent        NUMERIC NOT NULL,
    PRIMARY KEY (scope_kind, scope_id, period_start)
);

CREATE TABLE keymeter_reservations (
    id          TEXT PRIMARY KEY,
    amount      NUMERIC NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX keymeter_reservations_expiry ON keymeter_reservations (expires_at);

CREATE TABLE keymeter_reservation_budgets (
    reservation_id TEXT NOT NULL REFERENCES keymeter_reservations (id) ON DELETE CASCADE,
    scope_kind     TEXT NOT NULL,
    scope_id       TEXT NOT NULL,
    period_start   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (reservation_id, scope_kind, scope_id)
);
CREATE INDEX keymeter_reservation_budgets_scope ON keymeter_reservation_budgets (scope_kind, scope_id, period_start);
