-- Request ids of pruned events, with their event ids: a resend after `usage prune` is still a duplicate.
CREATE TABLE keymeter_pruned_requests (
    request_id  TEXT PRIMARY KEY,
    event_id    TEXT NOT NULL
);
