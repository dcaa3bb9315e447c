-- A host application's own schema, migrated with sqlx beside keymeter's tables.
CREATE TABLE users (
    id    INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE
);
