-- The web console (issue 11): people, their credentials (passkeys and
-- client certificates; no passwords), one-time invitations, server-side
-- sessions and the audit log. Tokens are stored only as SHA-256 hashes.
-- Times are timestamptz (whole seconds).
CREATE TABLE console_users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email       text    NOT NULL UNIQUE,
    scope       text COLLATE "C" NOT NULL,        -- identity path, '' for the vendor's admin scope
    role        text    NOT NULL,        -- viewer, operator, admin
    handle      bytea    NOT NULL UNIQUE, -- WebAuthn user handle
    created_by  text    NOT NULL,
    created_at  timestamptz NOT NULL,
    disabled_at timestamptz
);
CREATE TABLE console_credentials (
    id           bytea    PRIMARY KEY,
    user_id      bigint NOT NULL REFERENCES console_users (id),
    kind         text    NOT NULL,
    name         text    NOT NULL,
    data         bytea    NOT NULL,
    sign_count   bigint  NOT NULL,
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz
);
CREATE INDEX console_credentials_user ON console_credentials (user_id);
CREATE TABLE console_invitations (
    token_hash bytea    PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES console_users (id),
    kind       text    NOT NULL,        -- register (a passkey or certificate) or login (a one-time login link)
    created_by text    NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE TABLE console_sessions (
    token_hash bytea    PRIMARY KEY,
    user_id    bigint NOT NULL REFERENCES console_users (id),
    csrf       bytea    NOT NULL,
    method     text    NOT NULL,
    remote     text    NOT NULL,
    created_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX console_sessions_user ON console_sessions (user_id);
CREATE TABLE console_audit (
    id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at     timestamptz NOT NULL,
    actor  text    NOT NULL,
    scope  text COLLATE "C" NOT NULL,
    action text    NOT NULL,
    target text    NOT NULL,
    detail text    NOT NULL,
    remote text    NOT NULL,
    ok     boolean NOT NULL
);
CREATE INDEX console_audit_scope ON console_audit (scope, id);
