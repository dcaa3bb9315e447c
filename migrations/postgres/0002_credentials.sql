-- Provider credentials, sealed by the vault (AES-256-GCM); never plaintext.
CREATE TABLE keymeter_credentials (
    scope       TEXT NOT NULL CHECK (scope IN ('user', 'system')),
    owner       TEXT NOT NULL,              -- '' for system keys
    provider    TEXT NOT NULL,
    sealed      TEXT NOT NULL,              -- kmv1:<key-id>:<nonce>:<ciphertext>
    updated_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (scope, owner, provider)
);
