-- Usage over time (README "Usage over time"): counts per key and per workspace, per bucket
-- (granularity in seconds: 60, 3600, 86400; start in epoch seconds, UTC) and outcome. Nodes
-- add minute rows in batches; a periodic job rolls whole minutes up into hours and days.
-- usage_rollup.rolled_to: minutes before it are in the hour and day rows. A flush holds it
-- shared and adds a late minute (one before it) to the hour and day rows itself; the job holds
-- it exclusively, so every count reaches each granularity exactly once.

CREATE TABLE usage_key_buckets (
    key_id              TEXT NOT NULL,
    granularity         BIGINT NOT NULL,
    start               BIGINT NOT NULL,
    workspace_id        TEXT,
    success             BIGINT NOT NULL DEFAULT 0,
    upstream_error      BIGINT NOT NULL DEFAULT 0,
    rate_limited        BIGINT NOT NULL DEFAULT 0,
    quota_exceeded      BIGINT NOT NULL DEFAULT 0,
    concurrency_limited BIGINT NOT NULL DEFAULT 0,
    forbidden           BIGINT NOT NULL DEFAULT 0,
    rejected            BIGINT NOT NULL DEFAULT 0,
    other               BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, granularity, start)
);

-- a workspace's top keys over a range; retention deletes by age
CREATE INDEX usage_key_buckets_workspace ON usage_key_buckets (workspace_id, granularity, start);
CREATE INDEX usage_key_buckets_age ON usage_key_buckets (granularity, start);

CREATE TABLE usage_workspace_buckets (
    workspace_id        TEXT NOT NULL,
    granularity         BIGINT NOT NULL,
    start               BIGINT NOT NULL,
    success             BIGINT NOT NULL DEFAULT 0,
    upstream_error      BIGINT NOT NULL DEFAULT 0,
    rate_limited        BIGINT NOT NULL DEFAULT 0,
    quota_exceeded      BIGINT NOT NULL DEFAULT 0,
    concurrency_limited BIGINT NOT NULL DEFAULT 0,
    forbidden           BIGINT NOT NULL DEFAULT 0,
    rejected            BIGINT NOT NULL DEFAULT 0,
    other               BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace_id, granularity, start)
);

CREATE INDEX usage_workspace_buckets_age ON usage_workspace_buckets (granularity, start);

CREATE TABLE usage_rollup (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    rolled_to BIGINT NOT NULL
);

INSERT INTO usage_rollup (id, rolled_to) VALUES (1, 0);

-- Each key's running total (every outcome) through the end of each UTC day it has counts in:
-- a workspace's top keys over whole days are two lookups per key, whatever the window's length.
-- Kept in step with the day buckets (the roll-up, and a flush's late minutes); retention keeps
-- each key's last row before the day buckets' floor, the base later rows are measured from.
CREATE TABLE usage_key_running (
    key_id       TEXT NOT NULL,
    day          BIGINT NOT NULL,
    through      BIGINT NOT NULL,
    PRIMARY KEY (key_id, day)
);
