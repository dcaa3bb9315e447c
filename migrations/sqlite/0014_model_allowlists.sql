-- Model allowlists (DESIGN §15): a key's own rules, and an owner's or organisation's in its limits row. JSON arrays
-- of "[provider/]pattern"; an empty array allows any model.
ALTER TABLE keymeter_api_keys ADD COLUMN allowed_models TEXT NOT NULL DEFAULT '[]';
ALTER TABLE keymeter_limits ADD COLUMN models TEXT NOT NULL DEFAULT '[]';
