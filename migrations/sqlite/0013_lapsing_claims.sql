-- A reservation keeps what the store needs to end it without its process: the instance whose journal holds it
-- (which renews its expiry every few seconds while it lives), and the event billed if it lapses unsettled (the
-- request at its reservation, marked estimated, as JSON). A lapsed claim is billed, never deleted unbilled.
ALTER TABLE keymeter_reservations ADD COLUMN instance_id TEXT;
ALTER TABLE keymeter_reservations ADD COLUMN estimate TEXT;
CREATE INDEX keymeter_reservations_instance ON keymeter_reservations (instance_id)
    WHERE instance_id IS NOT NULL;
