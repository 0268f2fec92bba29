-- Members of a workspace (README "Members and roles"), and the key columns they bring.
-- An email is unique in its workspace: the service stores it lower-cased, so the unique key is
-- case-insensitive.

CREATE TABLE members (
    user_id      TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    email        TEXT NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at   TIMESTAMPTZ NOT NULL,
    UNIQUE (workspace_id, email)
);

CREATE INDEX members_order ON members (workspace_id, created_at, user_id);

-- internal_id (seed 003): stable, never reused; keys made before this migration take theirs
-- from their key_id. disabled_at: set while a key is disabled (reversible, unlike status).
ALTER TABLE api_keys ADD COLUMN internal_id TEXT;
UPDATE api_keys SET internal_id = 'int_' || substr(key_id, 5);
ALTER TABLE api_keys ALTER COLUMN internal_id SET NOT NULL;
CREATE UNIQUE INDEX api_keys_internal_id ON api_keys (internal_id);
ALTER TABLE api_keys ADD COLUMN disabled_at TIMESTAMPTZ;
