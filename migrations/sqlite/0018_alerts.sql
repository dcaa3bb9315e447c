-- Alerts and webhooks (DESIGN §16). An alert is written in the transaction of its cause and kept once per id;
-- fanned_out says its deliveries exist. A delivery is one alert on its way to one endpoint. Times are
-- microseconds since the epoch; a budget's thresholds are percentages written 50,80,100 (null: the defaults).
ALTER TABLE keymeter_budgets ADD COLUMN thresholds TEXT;
CREATE TABLE keymeter_alerts (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    data TEXT NOT NULL,
    fanned_out INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX keymeter_alerts_unfanned ON keymeter_alerts (created_at) WHERE fanned_out = 0;
CREATE TABLE keymeter_webhooks (
    id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    secrets TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE keymeter_deliveries (
    alert_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at INTEGER NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    delivered_at INTEGER,
    PRIMARY KEY (alert_id, endpoint_id)
);
CREATE INDEX keymeter_deliveries_due ON keymeter_deliveries (next_at) WHERE state = 'pending';
CREATE INDEX keymeter_deliveries_by_endpoint ON keymeter_deliveries (endpoint_id);
