-- The ledger: an append-only RFC 6962 Merkle log of accepted snapshots.
CREATE TABLE ledger_leaves (
    idx       INTEGER PRIMARY KEY,   -- 0-based leaf index
    leaf_hash BLOB    NOT NULL,
    data      BLOB    NOT NULL
);
CREATE INDEX ledger_leaves_hash ON ledger_leaves (leaf_hash);

CREATE TABLE ledger_nodes (
    level INTEGER NOT NULL,
    idx   INTEGER NOT NULL,
    hash  BLOB    NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

CREATE TABLE tree_heads (
    size       INTEGER PRIMARY KEY,
    root       BLOB    NOT NULL,
    checkpoint BLOB    NOT NULL,
    signature  BLOB    NOT NULL,
    cert_chain BLOB    NOT NULL
);
