-- A reservation may claim its request's id (DESIGN §15): while it lives no other reservation claims the same id,
-- so two requests with one client id are never both forwarded. Settling records the id's event; releasing or
-- expiry frees it.
ALTER TABLE keymeter_reservations ADD COLUMN request_id TEXT;
CREATE UNIQUE INDEX keymeter_reservations_request ON keymeter_reservations (request_id)
    WHERE request_id IS NOT NULL;
