-- The web console (README "Web console"): single-use sign-in links, sessions, and the sealed
-- plaintext of a key just created or rotated, waiting for the one page that shows it. Tokens are
-- stored hashed, like keys; a reveal is stored XOR a one-time pad that only the browser holds
-- (in the URL it is redirected to), so the store alone can never read a plaintext key.

CREATE TABLE console_links (
    token_hash   TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    user_id      TEXT NOT NULL,
    created_at   TEXT        NOT NULL,
    expires_at   TEXT        NOT NULL
);

CREATE INDEX console_links_expiry ON console_links (expires_at);

CREATE TABLE console_sessions (
    token_hash   TEXT PRIMARY KEY,
    workspace_id TEXT NOT NULL REFERENCES workspaces (id),
    user_id      TEXT NOT NULL,
    created_at   TEXT        NOT NULL,
    last_seen_at TEXT        NOT NULL
);

CREATE INDEX console_sessions_idle ON console_sessions (last_seen_at);

CREATE TABLE console_reveals (
    reveal_id    TEXT PRIMARY KEY,
    session_hash TEXT NOT NULL,
    key_id       TEXT NOT NULL,
    sealed       TEXT NOT NULL,
    expires_at   TEXT        NOT NULL
);

-- a key's detail page shows its rotation chain: the keys rotated from its first key
CREATE INDEX api_keys_rotated_from ON api_keys (rotated_from);
