-- Inbound API keys.
CREATE TABLE keymeter_api_keys (
    id                    TEXT PRIMARY KEY,
    name                  TEXT NOT NULL,
    owner                 TEXT NOT NULL,
    org                   TEXT,
    env                   TEXT NOT NULL CHECK (env IN ('live', 'test')),
    scopes                TEXT NOT NULL,            -- JSON array of strings
    hash                  TEXT NOT NULL,            -- PHC-style hash string
    lookup_kind           TEXT NOT NULL CHECK (lookup_kind IN ('id', 'digest', 'hint')),
    lookup_value          TEXT,                     -- digest or hint; NULL for generated keys
    hint                  TEXT NOT NULL,            -- display hint
    created_at            TIMESTAMPTZ NOT NULL,
    expires_at            TIMESTAMPTZ,
    last_used_at          TIMESTAMPTZ,
    disabled              BOOLEAN NOT NULL DEFAULT FALSE,
    revoked_at            TIMESTAMPTZ,
    allowed_ips           TEXT NOT NULL,            -- JSON array of CIDR strings
    rate_limit            TEXT,                     -- "100/min"
    metadata              TEXT NOT NULL,            -- JSON object
    previous_hash         TEXT,                     -- the secret a rotation replaced
    previous_valid_until  TIMESTAMPTZ
);

CREATE UNIQUE INDEX keymeter_api_keys_digest ON keymeter_api_keys (lookup_value) WHERE lookup_kind = 'digest';
CREATE INDEX keymeter_api_keys_hint ON keymeter_api_keys (lookup_value) WHERE lookup_kind = 'hint';
CREATE INDEX keymeter_api_keys_owner ON keymeter_api_keys (owner);
CREATE INDEX keymeter_api_keys_org ON keymeter_api_keys (org);
