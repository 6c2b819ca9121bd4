-- Snapshots (issue 6), normalized for size and for the questions asked:
-- the history of one device, one channel of one device over a time range,
-- the latest status of a fleet. Names (device types, units, channel groups,
-- channels) are stored once and referenced by small integers; a value row
-- is (snapshot, channel, position, value), about 20 bytes on disk.
-- Times are milliseconds since the Unix epoch.

CREATE TABLE device_types (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE        -- '' for snapshots without a type
);

CREATE TABLE units (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE        -- '' for unitless channels
);

CREATE TABLE channel_groups (
    id   INTEGER PRIMARY KEY,
    name TEXT    NOT NULL UNIQUE        -- '' for ungrouped channels
);

-- A channel is a name with its unit and group: the same name with another
-- unit is another channel, so a value is never read in the wrong unit.
CREATE TABLE channels (
    id       INTEGER PRIMARY KEY,
    name     TEXT    NOT NULL,
    unit_id  INTEGER NOT NULL REFERENCES units (id),
    group_id INTEGER NOT NULL REFERENCES channel_groups (id),
    UNIQUE (name, unit_id, group_id)
);

-- A device is (gateway identity path, local device id). Its head is the
-- snapshot with the largest seq; snapshot_count counts what is stored.
CREATE TABLE devices (
    id               INTEGER PRIMARY KEY,
    gateway          TEXT    NOT NULL,  -- compared byte-wise for scopes
    device           TEXT    NOT NULL,
    type_id          INTEGER NOT NULL REFERENCES device_types (id), -- of the head
    head_seq         INTEGER NOT NULL DEFAULT 0,
    head_hash        BLOB,
    head_time        INTEGER,
    head_snapshot_id INTEGER,
    snapshot_count   INTEGER NOT NULL DEFAULT 0,
    UNIQUE (gateway, device)
);

CREATE TABLE snapshots (
    id           INTEGER PRIMARY KEY,
    device_id    INTEGER NOT NULL REFERENCES devices (id),
    seq          INTEGER NOT NULL,
    time         INTEGER NOT NULL,      -- measurement time, ms
    type_id      INTEGER NOT NULL REFERENCES device_types (id),
    hash         BLOB    NOT NULL,      -- SHA-256 of the encoding
    prev         BLOB,                  -- NULL for seq 1
    signer       TEXT    NOT NULL,
    signed_at    INTEGER NOT NULL,
    received_at  INTEGER NOT NULL,
    ledger_index INTEGER NOT NULL,
    UNIQUE (device_id, seq)
);
CREATE INDEX snapshots_device_time ON snapshots (device_id, time, seq);
CREATE INDEX snapshots_hash ON snapshots (hash);

-- One row per value. ord is the value's position in the snapshot as
-- received, so the snapshot re-encodes to the same bytes. value has no
-- declared type (no affinity): the store writes integral values that fit
-- 2^53 as INTEGER (1 to 6 bytes instead of 8) and everything else,
-- including -0.0, as REAL, so every float64 comes back bit for bit. No
-- foreign keys here: the store is the only writer and checks ids, and a
-- lookup per value row would cost a third of the insert rate.
CREATE TABLE snapshot_values (
    snapshot_id INTEGER NOT NULL,
    channel_id  INTEGER NOT NULL,
    ord         INTEGER NOT NULL,
    value               NOT NULL,
    PRIMARY KEY (snapshot_id, channel_id)
) WITHOUT ROWID;

CREATE TABLE integrity_events (
    id           INTEGER PRIMARY KEY,
    gateway      TEXT    NOT NULL,
    device       TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    expected_seq INTEGER NOT NULL,
    hash         BLOB,
    detail       TEXT    NOT NULL,
    at           INTEGER NOT NULL       -- ms
);
CREATE INDEX integrity_events_at ON integrity_events (at);
CREATE INDEX integrity_events_gateway ON integrity_events (gateway, at);

CREATE TABLE rejects (
    id       INTEGER PRIMARY KEY,
    topic    TEXT    NOT NULL,
    gateway  TEXT    NOT NULL,
    reason   TEXT    NOT NULL,
    raw_hash BLOB,
    size     INTEGER NOT NULL,
    at       INTEGER NOT NULL           -- ms
);
CREATE INDEX rejects_at ON rejects (at);
