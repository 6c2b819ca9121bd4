-- The accounts an ingest partition session of a multi-node cluster has
-- subscribed to (its SUBACK received; docs/scale.md "The window of a
-- brand-new account"). The partition sessions are persistent (clean
-- session off, kept by the engine's replicated JetStream streams), so an
-- account once covered stays covered: its gateways' QoS 1 snapshots are
-- kept for the session even while no node runs it. The nodes refuse an
-- account's gateways at CONNECT until the account is here.
CREATE TABLE ingest_coverage (
    account TEXT PRIMARY KEY,
    covered_at TIMESTAMPTZ NOT NULL
);
