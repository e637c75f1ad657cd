-- 0006: one-time enrollment tokens (enrollment by QR, see broker/enrollment.py).
-- The token itself is never stored: token_id is a keyed BLAKE2b hash of it, and
-- the device's bundle (config, broker password, subject key) is kept sealed with
-- a key derived from the token, so this table holds no usable credential.
CREATE TABLE enrollment_tokens (
    token_id    TEXT PRIMARY KEY,
    device_id   TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    bundle      TEXT NOT NULL,
    used_at     TEXT,
    -- The request (client id) that redeemed the token: only it may ask again.
    used_by     TEXT
) WITHOUT ROWID;
CREATE INDEX enrollment_tokens_device ON enrollment_tokens (device_id);
