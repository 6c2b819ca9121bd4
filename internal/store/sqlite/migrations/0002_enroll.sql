-- Zero-touch onboarding: trusted manufacturer CAs and device claims.
CREATE TABLE manufacturers (
    fingerprint TEXT    NOT NULL UNIQUE, -- SHA-256 of der, lowercase hex
    subject     TEXT    NOT NULL,
    not_after   INTEGER NOT NULL,    -- unix seconds
    der         BLOB    NOT NULL,
    added_at    INTEGER NOT NULL,
    seq         INTEGER PRIMARY KEY AUTOINCREMENT
);

CREATE TABLE claims (
    kind        TEXT    NOT NULL,    -- 'serial' or 'subject'
    value       TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    consumed_at INTEGER,             -- NULL until an enrollment used the claim
    consumed_by TEXT    NOT NULL DEFAULT '',
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    UNIQUE (kind, value)
);
