-- Attribution (DESIGN §15): the tags a request carried (a JSON array) and the end user it was made for.
ALTER TABLE keymeter_usage_events ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
ALTER TABLE keymeter_usage_events ADD COLUMN end_user TEXT;
