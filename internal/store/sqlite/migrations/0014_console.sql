-- The web console (issue 11): people, their credentials (passkeys and
-- client certificates; no passwords), one-time invitations, server-side
-- sessions and the audit log. Tokens are stored only as SHA-256 hashes.
-- Times are Unix seconds.
CREATE TABLE console_users (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    email       TEXT    NOT NULL UNIQUE,
    scope       TEXT    NOT NULL,        -- identity path, '' for the vendor's admin scope
    role        TEXT    NOT NULL,        -- viewer, operator, admin
    handle      BLOB    NOT NULL UNIQUE, -- WebAuthn user handle
    created_by  TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    disabled_at INTEGER
);
CREATE TABLE console_credentials (
    id           BLOB    PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES console_users (id),
    kind         TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    data         BLOB    NOT NULL,
    sign_count   INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER
);
CREATE INDEX console_credentials_user ON console_credentials (user_id);
CREATE TABLE console_invitations (
    token_hash BLOB    PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES console_users (id),
    kind       TEXT    NOT NULL,        -- register (a passkey or certificate) or login (a one-time login link)
    created_by TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE TABLE console_sessions (
    token_hash BLOB    PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES console_users (id),
    csrf       BLOB    NOT NULL,
    method     TEXT    NOT NULL,
    remote     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);
CREATE TABLE console_audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    scope  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL,
    detail TEXT    NOT NULL,
    remote TEXT    NOT NULL,
    ok     INTEGER NOT NULL
);
CREATE INDEX console_audit_scope ON console_audit (scope, id);
