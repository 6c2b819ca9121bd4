-- Operator drain requests of a multi-node cluster ('fieldtrust cluster
-- drain NODE', docs/scale.md "Draining a node"): the node polls its row,
-- releases its partitions and roles, closes its connections, shuts its
-- engine node down, records drained_at and stops. Its next start deletes
-- the row (a started node is back in the cluster).
CREATE TABLE cluster_drains (
    node TEXT PRIMARY KEY,
    requested_at TIMESTAMPTZ NOT NULL,
    drained_at TIMESTAMPTZ
);
