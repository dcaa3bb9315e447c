-- Key rotation: the secret a rotation replaced, accepted until its grace period ends.
ALTER TABLE keymeter_api_keys ADD COLUMN previous_hash TEXT;            -- PHC-style hash string
ALTER TABLE keymeter_api_keys ADD COLUMN previous_valid_until INTEGER;  -- microseconds; NULL with no previous
