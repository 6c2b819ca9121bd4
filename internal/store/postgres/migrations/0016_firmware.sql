-- Firmware campaigns and the device messages (issue 12; the same tables as SQLite): what the platform
-- sent to gateways (commands, campaign notices, downloads) and what they
-- answered, the audit trail customers read and the ledger records.
CREATE TABLE firmware_campaigns (
	id TEXT PRIMARY KEY,
	version TEXT NOT NULL,
	device_type TEXT NOT NULL,
	target TEXT NOT NULL,
	scope TEXT NOT NULL,
	canary_percent BIGINT NOT NULL,
	max_failures BIGINT NOT NULL,
	state TEXT NOT NULL,
	stage BIGINT NOT NULL,
	reason TEXT NOT NULL DEFAULT '',
	created_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL
);
CREATE INDEX firmware_campaigns_state ON firmware_campaigns (state);
CREATE TABLE firmware_campaign_devices (
	campaign_id TEXT NOT NULL REFERENCES firmware_campaigns (id),
	path TEXT COLLATE "C" NOT NULL,
	stage BIGINT NOT NULL,
	state TEXT NOT NULL,
	reason TEXT NOT NULL DEFAULT '',
	updated_at BIGINT NOT NULL,
	PRIMARY KEY (campaign_id, path)
);
CREATE TABLE device_messages (
	seq BIGSERIAL PRIMARY KEY,
	id TEXT NOT NULL UNIQUE,
	kind TEXT NOT NULL,
	gateway TEXT COLLATE "C" NOT NULL,
	ref TEXT NOT NULL DEFAULT '',
	sender TEXT NOT NULL DEFAULT '',
	name TEXT NOT NULL DEFAULT '',
	at BIGINT NOT NULL,
	expires BIGINT NOT NULL DEFAULT 0,
	body BYTEA NOT NULL,
	state TEXT NOT NULL DEFAULT '',
	ledger_index BIGINT NOT NULL DEFAULT -1
);
CREATE INDEX device_messages_gateway ON device_messages (gateway, seq);
CREATE INDEX device_messages_ref ON device_messages (ref, kind);
CREATE INDEX device_messages_state ON device_messages (state) WHERE state <> '';
