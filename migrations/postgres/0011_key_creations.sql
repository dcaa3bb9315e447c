-- Key creations join the change feed (DESIGN §14), so a cache that remembers an id as unknown forgets that as
-- soon as the key is made, by any instance.
CREATE TRIGGER keymeter_api_keys_created
AFTER INSERT ON keymeter_api_keys
FOR EACH ROW EXECUTE FUNCTION keymeter_key_changed();
