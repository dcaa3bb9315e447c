-- One number that every change to a provider credential moves, in the changing transaction (triggers, so every
-- writer moves it, whatever its version): a process caching credentials reads it at most once a second and
-- forgets its cache when it moved (DESIGN §14).
CREATE TABLE keymeter_credential_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO keymeter_credential_version (id, version) VALUES (1, 0);
CREATE TRIGGER keymeter_credentials_inserted AFTER INSERT ON keymeter_credentials
BEGIN
    UPDATE keymeter_credential_version SET version = version + 1 WHERE id = 1;
END;
CREATE TRIGGER keymeter_credentials_updated AFTER UPDATE ON keymeter_credentials
BEGIN
    UPDATE keymeter_credential_version SET version = version + 1 WHERE id = 1;
END;
CREATE TRIGGER keymeter_credentials_deleted AFTER DELETE ON keymeter_credentials
BEGIN
    UPDATE keymeter_credential_version SET version = version + 1 WHERE id = 1;
END;
