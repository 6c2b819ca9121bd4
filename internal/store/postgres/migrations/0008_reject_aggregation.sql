-- Rejects are aggregated (issue 9 item 6): a flood of one device's garbage
-- must not cost a row per message. count is how many messages a row stands
-- for, last_at when the last of them arrived; repeats of the same message
-- (topic, reason, raw hash) and ingest's per-device summaries (raw_hash
-- NULL) update the latest row with their key instead of adding one. The
-- index finds that row; the table is trimmed to a bound by id.
ALTER TABLE rejects ADD COLUMN count bigint NOT NULL DEFAULT 1;
ALTER TABLE rejects ADD COLUMN last_at timestamptz;
UPDATE rejects SET last_at = at;
CREATE INDEX rejects_key ON rejects (topic, reason, raw_hash, id);
