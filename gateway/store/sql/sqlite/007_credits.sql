-- Per-key credits (README "Credits"): the balance of the last set and the adds since, with the
-- refill, as a JSON list of gateway.keys.model.Credits' fields; NULL: the key spends no credits.
-- What was spent lives in the limiter, which holds the live balance.

ALTER TABLE api_keys ADD COLUMN credits TEXT;
