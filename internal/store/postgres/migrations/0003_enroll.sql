-- Zero-touch onboarding: trusted manufacturer CAs and device claims
-- (SQLite's 0002_enroll.sql).
CREATE TABLE manufacturers (
    seq         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fingerprint text        NOT NULL UNIQUE, -- SHA-256 of der, lowercase hex
    subject     text        NOT NULL,
    not_after   timestamptz NOT NULL,
    der         bytea       NOT NULL,
    added_at    timestamptz NOT NULL
);

CREATE TABLE claims (
    seq         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text        NOT NULL,    -- 'serial' or 'subject'
    value       text        NOT NULL,
    path        text        NOT NULL,
    created_at  timestamptz NOT NULL,
    consumed_at timestamptz,             -- NULL until an enrollment used the claim
    consumed_by text        NOT NULL DEFAULT '',
    UNIQUE (kind, value)
);
