-- Per-key IP allowlists and shadow mode (README "IP allowlists", "Shadow mode").
-- allowed_ips: addresses and CIDRs in canonical form, as JSON text; empty = any address.
-- enforcement: enforce | shadow (a shadow key's own rules refuse no one; README "Shadow mode").
ALTER TABLE api_keys ADD COLUMN allowed_ips TEXT NOT NULL DEFAULT '[]';
ALTER TABLE api_keys ADD COLUMN enforcement TEXT NOT NULL DEFAULT 'enforce'
    CHECK (enforcement IN ('enforce', 'shadow'));

-- shadow_refused: requests a shadow rule would have refused. They are forwarded and counted under
-- their real outcome too, so this column is never part of a bucket's total.
ALTER TABLE usage_key_buckets ADD COLUMN shadow_refused BIGINT NOT NULL DEFAULT 0;
ALTER TABLE usage_workspace_buckets ADD COLUMN shadow_refused BIGINT NOT NULL DEFAULT 0;
