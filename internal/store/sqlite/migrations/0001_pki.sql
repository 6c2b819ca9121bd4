CREATE TABLE certificates (
    domain        TEXT    NOT NULL,
    serial        TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    issuer_serial TEXT    NOT NULL,
    not_before    INTEGER NOT NULL, -- unix seconds
    not_after     INTEGER NOT NULL,
    der           BLOB    NOT NULL,
    revoked_at    INTEGER,          -- unix seconds; NULL unless revoked
    reason        INTEGER NOT NULL DEFAULT 0,
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    UNIQUE (domain, serial)
);
CREATE INDEX certificates_name ON certificates (domain, name);
CREATE INDEX certificates_issuer ON certificates (domain, issuer_serial);

CREATE TABLE crl_numbers (
    domain        TEXT    NOT NULL,
    issuer_serial TEXT    NOT NULL,
    last          INTEGER NOT NULL,
    PRIMARY KEY (domain, issuer_serial)
);

CREATE TABLE service_roles (
    service TEXT PRIMARY KEY,
    role    TEXT NOT NULL
);
