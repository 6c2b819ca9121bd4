-- The ledger: an append-only RFC 6962 Merkle log of accepted snapshots
-- (SQLite's 0003_ledger.sql).
CREATE TABLE ledger_leaves (
    idx       bigint PRIMARY KEY,   -- 0-based leaf index
    leaf_hash bytea  NOT NULL,
    data      bytea  NOT NULL
);
CREATE INDEX ledger_leaves_hash ON ledger_leaves (leaf_hash);

CREATE TABLE ledger_nodes (
    level integer NOT NULL,
    idx   bigint  NOT NULL,
    hash  bytea   NOT NULL,
    PRIMARY KEY (level, idx)
);

CREATE TABLE tree_heads (
    size       bigint PRIMARY KEY,
    root       bytea  NOT NULL,
    checkpoint bytea  NOT NULL,
    signature  bytea  NOT NULL,
    cert_chain bytea  NOT NULL
);
