-- Each event's 15-minute UTC bucket (seconds since the epoch / 900, floored). Calendar reports sum per bucket
-- first (an integer grouping PostgreSQL aggregates in parallel, instead of formatting every event's local time)
-- and then per local day, week or month.
ALTER TABLE keymeter_usage_events ADD COLUMN bucket BIGINT;
UPDATE keymeter_usage_events SET bucket = floor(extract(epoch FROM at) / 900)::bigint;
ALTER TABLE keymeter_usage_events ALTER COLUMN bucket SET NOT NULL;
