-- The master and account CAs of a multi-node cluster, their keys sealed
-- (secretbox: the passphrase, or the secrets key every node's data
-- directory has), so that a CA one node made issues on every node and two
-- nodes never make two CAs for one path (docs/scale.md "CA keys on several
-- nodes"). The first row for a (domain, name) wins; a node that made
-- another at the same time adopts it.
CREATE TABLE ca_keys (
    domain TEXT NOT NULL,
    name TEXT NOT NULL,
    cert BYTEA NOT NULL,
    sealed_key BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (domain, name)
);
