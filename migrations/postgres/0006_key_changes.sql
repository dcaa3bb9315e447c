-- Key changes, for the caches of every instance: a trigger publishes each change to what a verify decides on
-- (revoke, disable, enable, rotate, re-hash, expiry, scopes, networks, limits) on the `keymeter_keys` channel,
-- delivered when the changing transaction commits, whoever the writer.
CREATE FUNCTION keymeter_key_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('keymeter_keys', OLD.id);
    ELSE
        PERFORM pg_notify('keymeter_keys', NEW.id);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER keymeter_api_keys_changed
AFTER UPDATE OF name, owner, org, env, scopes, hash, lookup_kind, lookup_value, expires_at, disabled, revoked_at,
    allowed_ips, rate_limit, metadata, previous_hash, previous_valid_until OR DELETE ON keymeter_api_keys
FOR EACH ROW EXECUTE FUNCTION keymeter_key_changed();
