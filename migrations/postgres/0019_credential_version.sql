-- One number that every change to a provider credential moves, in the changing transaction (a statement trigger,
-- so every writer moves it, whatever its version): an instance caching credentials reads it at most once a second
-- and forgets its cache when it moved (DESIGN §14).
CREATE TABLE keymeter_credential_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO keymeter_credential_version (id, version) VALUES (1, 0);
CREATE FUNCTION keymeter_credentials_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE keymeter_credential_version SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END;
$$;
CREATE TRIGGER keymeter_credentials_changed
AFTER INSERT OR UPDATE OR DELETE ON keymeter_credentials
FOR EACH STATEMENT EXECUTE FUNCTION keymeter_credentials_changed();
