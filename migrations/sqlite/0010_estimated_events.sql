-- Events billed at their reservation because the usage never arrived (DESIGN §13), and those later replaced by
-- the exact usage. Reports count the estimated ones apart through the partial index.
ALTER TABLE keymeter_usage_events ADD COLUMN estimated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keymeter_usage_events ADD COLUMN estimated_first INTEGER NOT NULL DEFAULT 0;
CREATE INDEX keymeter_usage_events_estimated ON keymeter_usage_events (at) WHERE estimated = 1;
