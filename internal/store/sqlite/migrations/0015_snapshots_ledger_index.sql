-- The console's live view reads new snapshots in ledger order, by the index
-- the rules' migration (0012) creates too: a no-op where that ran first.
CREATE INDEX IF NOT EXISTS snapshots_ledger_index ON snapshots (ledger_index);
