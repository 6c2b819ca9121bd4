-- The DCC V&V registry (docs/dcc.md): issuers, registered DCCs, their
-- equipment identifications, and the registry's own Merkle transparency
-- log (same shape as the snapshot ledger, separate tree).
CREATE TABLE registry_issuers (
    lab        TEXT    PRIMARY KEY,
    roots      BYTEA   NOT NULL,   -- PEM certificates whose chains speak for the lab
    created_at BIGINT  NOT NULL
);
CREATE TABLE registry_dccs (
    dcc_id        TEXT    PRIMARY KEY,
    lab           TEXT    NOT NULL REFERENCES registry_issuers (lab),
    performed     TEXT    NOT NULL,   -- performance date (sortable ISO date)
    registered_at BIGINT  NOT NULL,
    leaf_index    BIGINT  NOT NULL,   -- the registration's leaf in the log
    metadata      BYTEA   NOT NULL,   -- JSON (dcc.Metadata + signature status)
    content       BYTEA,               -- the signed DCC exactly as submitted, if submitted whole
    revoked_at    BIGINT,
    revoke_reason TEXT,
    revoke_leaf   BIGINT
);
CREATE TABLE registry_equipment (
    issuer TEXT NOT NULL,
    value  TEXT NOT NULL,
    dcc_id TEXT NOT NULL REFERENCES registry_dccs (dcc_id),
    PRIMARY KEY (issuer, value, dcc_id)
);
CREATE INDEX registry_equipment_dcc ON registry_equipment (dcc_id);
CREATE TABLE registry_log_leaves (
    idx       BIGINT  PRIMARY KEY,
    leaf_hash BYTEA   NOT NULL,
    data      BYTEA   NOT NULL
);
CREATE INDEX registry_log_leaves_hash ON registry_log_leaves (leaf_hash);
CREATE TABLE registry_log_nodes (
    level BIGINT  NOT NULL,
    idx   BIGINT  NOT NULL,
    hash  BYTEA   NOT NULL,
    PRIMARY KEY (level, idx)
);
CREATE TABLE registry_heads (
    size       BIGINT  PRIMARY KEY,
    checkpoint BYTEA   NOT NULL,
    signature  BYTEA   NOT NULL
);
CREATE TABLE registry_applied (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    size BIGINT  NOT NULL
);
