-- A snapshot's values move from one snapshot_values row each into one BLOB
-- in the snapshot's row (issue 10: 34 M value rows took 36 s of the 61 s
-- the storage load test spent inserting, and reading the 85,000 rows of a
-- fleet status 73 ms). The encoding is described in values.go; the Go
-- step of this migration (packLegacyValues) moves existing values into it
-- and drops snapshot_values, in the same transaction.
ALTER TABLE snapshots ADD COLUMN vals BLOB NOT NULL DEFAULT x'';
