-- Initial key-store schema (SQLite).
-- Timestamps are ISO-8601 UTC text with microseconds ("2024-05-01T12:00:00.000000+00:00"),
-- so text order is time order. Lists and scopes are JSON text.

CREATE TABLE workspaces (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    default_project_id TEXT NOT NULL REFERENCES projects (id) DEFERRABLE INITIALLY DEFERRED,
    created_at         TEXT NOT NULL
);

CREATE TABLE projects (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    name         TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    UNIQUE (workspace_id, name)
);

CREATE TABLE namespaces (
    id           TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    name         TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    UNIQUE (workspace_id, name)
);

CREATE TABLE api_keys (
    key_id              TEXT PRIMARY KEY,
    key_hash            TEXT NOT NULL UNIQUE,
    key_prefix          TEXT NOT NULL,
    hint                TEXT NOT NULL,
    name                TEXT NOT NULL,
    description         TEXT NOT NULL DEFAULT '',
    workspace_id        TEXT REFERENCES workspaces (id),
    project_id          TEXT REFERENCES projects (id),
    user_id             TEXT,
    key_type            TEXT NOT NULL DEFAULT 'standard' CHECK (key_type IN ('standard', 'admin')),
    environment         TEXT NOT NULL DEFAULT 'live' CHECK (environment IN ('live', 'test')),
    permissions         TEXT NOT NULL DEFAULT '[]',
    scopes              TEXT NOT NULL DEFAULT '[]',
    allowed_origins     TEXT NOT NULL DEFAULT '[]',
    rate_limit_override INTEGER,
    concurrency_limit   INTEGER,
    status              TEXT NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'revoked', 'expired')),
    expires_at          TEXT,
    last_used_at        TEXT,
    created_at          TEXT NOT NULL,
    created_by          TEXT,
    revoked_at          TEXT,
    revoked_by          TEXT,
    rotated_from        TEXT
);

CREATE INDEX api_keys_workspace_order ON api_keys (workspace_id, created_at, key_id);
CREATE INDEX api_keys_order ON api_keys (created_at, key_id);
CREATE INDEX api_keys_user ON api_keys (user_id);
CREATE INDEX api_keys_status ON api_keys (status);

CREATE TABLE key_usage (
    key_id       TEXT PRIMARY KEY REFERENCES api_keys (key_id),
    requests     INTEGER NOT NULL DEFAULT 0,
    rate_limited INTEGER NOT NULL DEFAULT 0
);

-- The change feed: every key mutation appends the affected hash in the same transaction.
CREATE TABLE key_changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    key_hash   TEXT NOT NULL,
    changed_at TEXT NOT NULL
);

CREATE INDEX key_changes_changed_at ON key_changes (changed_at);

CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    at           TEXT NOT NULL,
    actor        TEXT,
    action       TEXT NOT NULL,
    target       TEXT NOT NULL,
    workspace_id TEXT,
    changes      TEXT NOT NULL DEFAULT '{}'
);

CREATE INDEX audit_log_workspace ON audit_log (workspace_id, id);
