-- A key's allowed models can change (PATCH /api/v1/api-keys/{id}): the change feed covers them too, so every
-- process's record cache learns of it.
DROP TRIGGER keymeter_api_keys_changed;
CREATE TRIGGER keymeter_api_keys_changed
AFTER UPDATE OF name, owner, org, env, scopes, hash, lookup_kind, lookup_value, expires_at, disabled, revoked_at,
    allowed_ips, rate_limit, metadata, previous_hash, previous_valid_until, allowed_models ON keymeter_api_keys
BEGIN
    INSERT INTO keymeter_key_changes (key_id) VALUES (NEW.id);
    DELETE FROM keymeter_key_changes WHERE seq <= last_insert_rowid() - 10000;
END;
