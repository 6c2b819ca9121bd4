-- HTTPS agents (issue 13, package agent): OAuth 2.0 clients that live in
-- the identity tree. Secrets are never stored in the clear: the shared
-- secret is sealed with the platform's agent key, registration access
-- tokens are SHA-256 hashes. Times are Unix milliseconds, 0 for unset.
-- version is the row's optimistic-concurrency counter.
CREATE TABLE agents (
    client_id      text    PRIMARY KEY,
    path           text    COLLATE "C" NOT NULL UNIQUE, -- compared byte-wise for scopes
    tenant         text    NOT NULL,
    profile        text    NOT NULL,
    created_at     bigint NOT NULL,
    revoked_at     bigint NOT NULL DEFAULT 0,
    iat_id         text    NOT NULL DEFAULT '',
    iat_expires    bigint NOT NULL DEFAULT 0,
    generation     bigint NOT NULL DEFAULT 0,
    expires_at     bigint NOT NULL DEFAULT 0,
    secret_sealed  bytea,
    jwks           bytea,
    rat_hash       bytea,
    prev_rat_hash  bytea,
    prev_rat_until bigint NOT NULL DEFAULT 0,
    used           boolean NOT NULL DEFAULT false,
    config         bytea,
    config_etag    bigint NOT NULL DEFAULT 0,
    mappings       bytea,
    version        bigint NOT NULL
);

-- Client assertion ids already used, kept until the assertion expires.
CREATE TABLE agent_assertions (
    client_id  text    NOT NULL,
    jti        text    NOT NULL,
    expires_at bigint NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX agent_assertions_expiry ON agent_assertions (expires_at);
