-- HTTPS agents (issue 13, package agent): OAuth 2.0 clients that live in
-- the identity tree. Secrets are never stored in the clear: the shared
-- secret is sealed with the platform's agent key, registration access
-- tokens are SHA-256 hashes. Times are Unix milliseconds, 0 for unset.
-- version is the row's optimistic-concurrency counter.
CREATE TABLE agents (
    client_id      TEXT    PRIMARY KEY,
    path           TEXT    NOT NULL UNIQUE, -- compared byte-wise for scopes
    tenant         TEXT    NOT NULL,
    profile        TEXT    NOT NULL,
    created_at     INTEGER NOT NULL,
    revoked_at     INTEGER NOT NULL DEFAULT 0,
    iat_id         TEXT    NOT NULL DEFAULT '',
    iat_expires    INTEGER NOT NULL DEFAULT 0,
    generation     INTEGER NOT NULL DEFAULT 0,
    expires_at     INTEGER NOT NULL DEFAULT 0,
    secret_sealed  BLOB,
    jwks           BLOB,
    rat_hash       BLOB,
    prev_rat_hash  BLOB,
    prev_rat_until INTEGER NOT NULL DEFAULT 0,
    used           INTEGER NOT NULL DEFAULT 0,
    config         BLOB,
    config_etag    INTEGER NOT NULL DEFAULT 0,
    mappings       BLOB,
    version        INTEGER NOT NULL
);

-- Client assertion ids already used, kept until the assertion expires.
CREATE TABLE agent_assertions (
    client_id  TEXT    NOT NULL,
    jti        TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (client_id, jti)
) WITHOUT ROWID;
CREATE INDEX agent_assertions_expiry ON agent_assertions (expires_at);
