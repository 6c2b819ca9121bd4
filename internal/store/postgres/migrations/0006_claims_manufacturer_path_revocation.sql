-- SQLite's 0005_claims_manufacturer_path_revocation.sql: claims name their
-- manufacturer CA (legacy claims keep ''), record the consuming onboarding
-- certificate and are revoked with their path; path revocations; one
-- revocation version row per domain.
ALTER TABLE claims
    ADD COLUMN manufacturer_key_id  text NOT NULL DEFAULT '',
    ADD COLUMN manufacturer_subject text NOT NULL DEFAULT '',
    ADD COLUMN consumed_by_cert     text NOT NULL DEFAULT '',
    ADD COLUMN revoked_at           timestamptz;
ALTER TABLE claims DROP CONSTRAINT claims_kind_value_key;
ALTER TABLE claims ADD CONSTRAINT claims_manufacturer_kind_value_key UNIQUE (manufacturer_key_id, kind, value);
CREATE INDEX claims_path ON claims (path);

CREATE TABLE path_revocations (
    domain     text        NOT NULL,
    path       text        NOT NULL,
    revoked_at timestamptz NOT NULL,
    reason     integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (domain, path)
);

CREATE TABLE revocation_versions (
    domain  text   PRIMARY KEY,
    version bigint NOT NULL
);

CREATE INDEX certificates_kind ON certificates (domain, kind);
