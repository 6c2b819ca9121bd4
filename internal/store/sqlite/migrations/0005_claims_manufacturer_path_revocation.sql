-- Claims name the manufacturer CA that must have issued the onboarding
-- certificate (serials and subjects are unique only per manufacturer), record
-- which onboarding certificate consumed them, and are revoked with their
-- path. Claims made before keep manufacturer_key_id = '' (legacy):
-- enrollment refuses them until 'fieldtrust device adopt-claims' assigns a
-- manufacturer. SQLite cannot change a UNIQUE constraint in place, so the
-- table is rebuilt.
CREATE TABLE claims_v2 (
    manufacturer_key_id  TEXT    NOT NULL DEFAULT '', -- pki.KeyID of the manufacturer CA; '' for legacy claims
    manufacturer_subject TEXT    NOT NULL DEFAULT '',
    kind                 TEXT    NOT NULL,             -- 'serial' or 'subject'
    value                TEXT    NOT NULL,
    path                 TEXT    NOT NULL,
    created_at           INTEGER NOT NULL,
    consumed_at          INTEGER,                      -- NULL until an enrollment used the claim
    consumed_by          TEXT    NOT NULL DEFAULT '',  -- onboarding certificate serial
    consumed_by_cert     TEXT    NOT NULL DEFAULT '',  -- its SHA-256 fingerprint
    revoked_at           INTEGER,                      -- NULL unless the path was revoked
    seq                  INTEGER PRIMARY KEY AUTOINCREMENT,
    UNIQUE (manufacturer_key_id, kind, value)
);
INSERT INTO claims_v2 (kind, value, path, created_at, consumed_at, consumed_by, seq)
    SELECT kind, value, path, created_at, consumed_at, consumed_by, seq FROM claims;
DROP TABLE claims;
ALTER TABLE claims_v2 RENAME TO claims;
CREATE INDEX claims_path ON claims (path);

-- Revoking an identity path (pki revoke PATH) refuses every certificate of
-- the path issued before revoked_at, and issuing on their authority.
CREATE TABLE path_revocations (
    domain     TEXT    NOT NULL,
    path       TEXT    NOT NULL,
    revoked_at INTEGER NOT NULL, -- unix seconds
    reason     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (domain, path)
);

-- One row per domain, bumped with every revocation: the running platform
-- polls this instead of listing certificates.
CREATE TABLE revocation_versions (
    domain  TEXT    PRIMARY KEY,
    version INTEGER NOT NULL
);

CREATE INDEX certificates_kind ON certificates (domain, kind);
