-- A key's allowed models and tags can change (PATCH /api/v1/api-keys/{id}); keys carry tags every event of theirs
-- keeps (DESIGN §15). The change feed covers both, so every instance's record cache learns of a change.
ALTER TABLE keymeter_api_keys ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
DROP TRIGGER keymeter_api_keys_changed ON keymeter_api_keys;
CREATE TRIGGER keymeter_api_keys_changed
AFTER UPDATE OF name, owner, org, env, scopes, hash, lookup_kind, lookup_value, expires_at, disabled, revoked_at,
    allowed_ips, rate_limit, metadata, previous_hash, previous_valid_until, allowed_models, tags OR DELETE
    ON keymeter_api_keys
FOR EACH ROW EXECUTE FUNCTION keymeter_key_changed();
