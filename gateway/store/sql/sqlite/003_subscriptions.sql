-- Subscriptions: which plan (a name from the config's `plans`) a workspace is on; at most one
-- per workspace. A key's cache entry reads its workspace's row in the same query as the key.

CREATE TABLE subscriptions (
    subscription_id TEXT PRIMARY KEY,
    workspace_id    TEXT NOT NULL UNIQUE REFERENCES workspaces (id),
    plan            TEXT NOT NULL,
    started_at      TEXT NOT NULL
);

CREATE INDEX subscriptions_plan ON subscriptions (plan);
