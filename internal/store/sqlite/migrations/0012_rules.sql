-- Rules, alarms, tasks and the notification outbox (issue 15). Times are
-- milliseconds since the Unix epoch, as in 0004_snapshots.sql.

-- The rules engine reads snapshots in ledger order from its cursor.
CREATE INDEX snapshots_ledger_index ON snapshots (ledger_index);

CREATE TABLE rules (
    id         TEXT    PRIMARY KEY,
    name       TEXT    NOT NULL,
    scope      TEXT    NOT NULL,          -- identity path or '*'
    author     TEXT    NOT NULL,
    revision   INTEGER NOT NULL,
    source     BLOB    NOT NULL,
    enabled    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (scope, name)
);

-- One row: the next ledger index the engine evaluates.
CREATE TABLE rules_cursor (
    one  INTEGER PRIMARY KEY CHECK (one = 1),
    next INTEGER NOT NULL
);

CREATE TABLE rule_states (
    rule_id       TEXT    NOT NULL,
    device        TEXT    NOT NULL,
    pending_since INTEGER NOT NULL,
    PRIMARY KEY (rule_id, device)
);

CREATE TABLE alarms (
    id         TEXT    PRIMARY KEY,
    rule_id    TEXT    NOT NULL,
    rule_name  TEXT    NOT NULL,
    gateway    TEXT    NOT NULL,          -- compared byte-wise for scopes
    device     TEXT    NOT NULL,
    severity   TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    summary    TEXT    NOT NULL,
    snapshot   BLOB,
    raised_at  INTEGER NOT NULL,
    acked_at   INTEGER,
    acked_by   TEXT    NOT NULL DEFAULT '',
    cleared_at INTEGER,
    cleared_by TEXT    NOT NULL DEFAULT ''
);
-- At most one open alarm per rule and device: the deduplication.
CREATE UNIQUE INDEX alarms_open ON alarms (rule_id, device) WHERE state <> 'cleared';
CREATE INDEX alarms_gateway ON alarms (gateway, raised_at);
CREATE INDEX alarms_raised ON alarms (raised_at);

CREATE TABLE tasks (
    id         TEXT    PRIMARY KEY,
    title      TEXT    NOT NULL,
    gateway    TEXT    NOT NULL,
    device     TEXT    NOT NULL,
    assignee   TEXT    NOT NULL,
    due        INTEGER,
    state      TEXT    NOT NULL,
    rule_id    TEXT    NOT NULL,
    alarm_id   TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX tasks_gateway ON tasks (gateway, created_at);
CREATE INDEX tasks_created ON tasks (created_at);

CREATE TABLE task_comments (
    id      INTEGER PRIMARY KEY,
    task_id TEXT    NOT NULL REFERENCES tasks (id),
    author  TEXT    NOT NULL,
    text    TEXT    NOT NULL,
    at      INTEGER NOT NULL
);
CREATE INDEX task_comments_task ON task_comments (task_id, id);

CREATE TABLE outbox (
    id         TEXT    PRIMARY KEY,
    kind       TEXT    NOT NULL,
    rule_id    TEXT    NOT NULL,
    gateway    TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    state      TEXT    NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    next_at    INTEGER NOT NULL,
    last_error TEXT    NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    sent_at    INTEGER
);
CREATE INDEX outbox_due ON outbox (state, next_at);
CREATE INDEX outbox_gateway ON outbox (gateway, created_at);

CREATE TABLE rule_errors (
    id       INTEGER PRIMARY KEY,
    rule_id  TEXT    NOT NULL,
    gateway  TEXT    NOT NULL,
    device   TEXT    NOT NULL,
    message  TEXT    NOT NULL,
    snapshot BLOB,
    at       INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    last_at  INTEGER NOT NULL,
    UNIQUE (rule_id, device, message)
);
CREATE INDEX rule_errors_last ON rule_errors (last_at);

CREATE TABLE webhook_endpoints (
    name       TEXT    PRIMARY KEY,
    scope      TEXT    NOT NULL,
    url        TEXT    NOT NULL,
    secret     BLOB    NOT NULL,          -- sealed (package secretbox)
    created_at INTEGER NOT NULL
);
