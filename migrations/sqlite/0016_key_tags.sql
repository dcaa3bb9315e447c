-- A key's allowed models and tags can change (PATCH /api/v1/api-keys/{id}); keys carry tags every event of theirs
-- keeps (DESIGN §15). The change feed covers both, so every process's record cache learns of a change.
ALTER TABLE keymeter_api_keys ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
DROP TRIGGER keymeter_api_keys_changed;
CREATE TRIGGER keymeter_api_keys_changed
AFTER UPDATE OF name, owner, org, env, scopes, hash, lookup_kind, lookup_value, expires_at, disabled, revoked_at,
    allowed_ips, rate_limit, metadata, previous_hash, previous_valid_until, allowed_models, tags ON keymeter_api_keys
BEGIN
    INSERT INTO keymeter_key_changes (key_id) VALUES (NEW.id);
    DELETE FROM keymeter_key_changes WHERE seq <= last_insert_rowid() - 10000;
END;
