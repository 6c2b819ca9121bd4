-- The DCC V&V registry (docs/dcc.md): issuers, registered DCCs, their
-- equipment identifications, and the registry's own Merkle transparency
-- log (same shape as the snapshot ledger, separate tree).
CREATE TABLE registry_issuers (
    lab        TEXT    PRIMARY KEY,
    roots      BLOB    NOT NULL,   -- PEM certificates whose chains speak for the lab
    created_at INTEGER NOT NULL
);
CREATE TABLE registry_dccs (
    dcc_id        TEXT    PRIMARY KEY,
    lab           TEXT    NOT NULL REFERENCES registry_issuers (lab),
    performed     TEXT    NOT NULL,   -- performance date (sortable ISO date)
    registered_at INTEGER NOT NULL,
    leaf_index    INTEGER NOT NULL,   -- the registration's leaf in the log
    metadata      BLOB    NOT NULL,   -- JSON (dcc.Metadata + signature status)
    content       BLOB,               -- the signed DCC exactly as submitted, if submitted whole
    revoked_at    INTEGER,
    revoke_reason TEXT,
    revoke_leaf   INTEGER
);
CREATE TABLE registry_equipment (
    issuer TEXT NOT NULL,
    value  TEXT NOT NULL,
    dcc_id TEXT NOT NULL REFERENCES registry_dccs (dcc_id),
    PRIMARY KEY (issuer, value, dcc_id)
) WITHOUT ROWID;
CREATE INDEX registry_equipment_dcc ON registry_equipment (dcc_id);
CREATE TABLE registry_log_leaves (
    idx       INTEGER PRIMARY KEY,
    leaf_hash BLOB    NOT NULL,
    data      BLOB    NOT NULL
);
CREATE INDEX registry_log_leaves_hash ON registry_log_leaves (leaf_hash);
CREATE TABLE registry_log_nodes (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB    NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
CREATE TABLE registry_heads (
    size       INTEGER PRIMARY KEY,
    checkpoint BLOB    NOT NULL,
    signature  BLOB    NOT NULL
);
CREATE TABLE registry_applied (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    size INTEGER NOT NULL
);
