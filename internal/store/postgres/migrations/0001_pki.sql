-- Certificates, CRL numbers and service roles: the same tables as SQLite's
-- 0001_pki.sql. Times are timestamptz with whole seconds, as stored there.
CREATE TABLE certificates (
    seq           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    domain        text        NOT NULL,
    serial        text        NOT NULL,
    kind          text        NOT NULL,
    name          text        NOT NULL,
    issuer_serial text        NOT NULL,
    not_before    timestamptz NOT NULL,
    not_after     timestamptz NOT NULL,
    der           bytea       NOT NULL,
    revoked_at    timestamptz,          -- NULL unless revoked
    reason        integer     NOT NULL DEFAULT 0,
    UNIQUE (domain, serial)
);
CREATE INDEX certificates_name ON certificates (domain, name);
CREATE INDEX certificates_issuer ON certificates (domain, issuer_serial);

CREATE TABLE crl_numbers (
    domain        text   NOT NULL,
    issuer_serial text   NOT NULL,
    last          bigint NOT NULL,
    PRIMARY KEY (domain, issuer_serial)
);

CREATE TABLE service_roles (
    service text PRIMARY KEY,
    role    text NOT NULL
);
