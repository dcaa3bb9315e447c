-- Key changes, for the caches of every process on this database: a trigger records each change to what a verify
-- decides on (revoke, disable, enable, rotate, re-hash, expiry, scopes, networks, limits), in the changing
-- transaction, whoever the writer. Only the newest 10,000 are kept; a reader further behind forgets everything.
CREATE TABLE keymeter_key_changes (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    key_id  TEXT NOT NULL
);

CREATE TRIGGER keymeter_api_keys_changed
AFTER UPDATE OF name, owner, org, env, scopes, hash, lookup_kind, lookup_value, expires_at, disabled, revoked_at,
    allowed_ips, rate_limit, metadata, previous_hash, previous_valid_until ON keymeter_api_keys
BEGIN
    INSERT INTO keymeter_key_changes (key_id) VALUES (NEW.id);
    DELETE FROM keymeter_key_changes WHERE seq <= last_insert_rowid() - 10000;
END;

CREATE TRIGGER keymeter_api_keys_deleted AFTER DELETE ON keymeter_api_keys
BEGIN
    INSERT INTO keymeter_key_changes (key_id) VALUES (OLD.id);
END;
