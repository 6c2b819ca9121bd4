-- The console's live view reads new snapshots in ledger order.
CREATE INDEX snapshots_ledger_index ON snapshots (ledger_index);
