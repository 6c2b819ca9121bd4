-- LedgerLeaf asks for the first leaf with a hash (ORDER BY idx LIMIT 1).
-- With an index on leaf_hash alone, PostgreSQL sometimes (until it
-- re-analyses a fast-growing table) walks the primary key in idx order
-- instead, reading the whole table for every new leaf, which matches
-- nothing. An index on (leaf_hash, idx) answers the query directly.
CREATE INDEX ledger_leaves_hash_idx ON ledger_leaves (leaf_hash, idx);
DROP INDEX ledger_leaves_hash;
