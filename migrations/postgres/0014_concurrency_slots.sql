-- Concurrency limits (DESIGN §15): a scope's most requests in flight, and the slots requests hold. A slot is a
-- claim that lapses at expires_at, judged by the database's clock, unless its instance renews it.
ALTER TABLE keymeter_limits ADD COLUMN max_parallel INTEGER;
CREATE TABLE keymeter_slots (
    scope TEXT NOT NULL,
    slot_id TEXT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (scope, slot_id)
);
CREATE INDEX keymeter_slots_by_slot ON keymeter_slots (slot_id);
