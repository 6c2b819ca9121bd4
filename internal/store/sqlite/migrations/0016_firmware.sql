-- Firmware campaigns and the device messages (issue 12): what the platform
-- sent to gateways (commands, campaign notices, downloads) and what they
-- answered, the audit trail customers read and the ledger records.
CREATE TABLE firmware_campaigns (
	id TEXT PRIMARY KEY,
	version TEXT NOT NULL,
	device_type TEXT NOT NULL,
	target TEXT NOT NULL,
	scope TEXT NOT NULL,
	canary_percent INTEGER NOT NULL,
	max_failures INTEGER NOT NULL,
	state TEXT NOT NULL,
	stage INTEGER NOT NULL,
	reason TEXT NOT NULL DEFAULT '',
	created_at INTEGER NOT NULL,
	updated_at INTEGER NOT NULL
);
CREATE INDEX firmware_campaigns_state ON firmware_campaigns (state);
CREATE TABLE firmware_campaign_devices (
	campaign_id TEXT NOT NULL REFERENCES firmware_campaigns (id),
	path TEXT NOT NULL,
	stage INTEGER NOT NULL,
	state TEXT NOT NULL,
	reason TEXT NOT NULL DEFAULT '',
	updated_at INTEGER NOT NULL,
	PRIMARY KEY (campaign_id, path)
);
CREATE TABLE device_messages (
	seq INTEGER PRIMARY KEY AUTOINCREMENT,
	id TEXT NOT NULL UNIQUE,
	kind TEXT NOT NULL,
	gateway TEXT NOT NULL,
	ref TEXT NOT NULL DEFAULT '',
	sender TEXT NOT NULL DEFAULT '',
	name TEXT NOT NULL DEFAULT '',
	at INTEGER NOT NULL,
	expires INTEGER NOT NULL DEFAULT 0,
	body BLOB NOT NULL,
	state TEXT NOT NULL DEFAULT '',
	ledger_index INTEGER NOT NULL DEFAULT -1
);
CREATE INDEX device_messages_gateway ON device_messages (gateway, seq);
CREATE INDEX device_messages_ref ON device_messages (ref, kind);
CREATE INDEX device_messages_state ON device_messages (state) WHERE state <> '';
