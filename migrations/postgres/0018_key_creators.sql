-- Keys an owner's key creates for its owner (`me/keys`, DESIGN §12) name their creator: revoking the creator revokes
-- them, in the same statement. The column never changes after insert, so the change feed need not watch it (the
-- revocation it leads to is an update of `revoked_at`, which it does watch).
ALTER TABLE keymeter_api_keys ADD COLUMN created_by TEXT;
CREATE INDEX keymeter_api_keys_created_by ON keymeter_api_keys (created_by) WHERE created_by IS NOT NULL;
