-- Key creations join the change feed (DESIGN §14), so a cache that remembers an id as unknown forgets that as
-- soon as the key is made, by any process.
CREATE TRIGGER keymeter_api_keys_created AFTER INSERT ON keymeter_api_keys
BEGIN
    INSERT INTO keymeter_key_changes (key_id) VALUES (NEW.id);
    DELETE FROM keymeter_key_changes WHERE seq <= last_insert_rowid() - 10000;
END;
