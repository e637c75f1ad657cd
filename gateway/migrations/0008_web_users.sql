-- 0008: dashboard users, the sites an operator may see, and login sessions.

-- role: operator (only the sites in user_sites, no personal fields),
-- health (traces and exports), admin (sites, users, devices).
CREATE TABLE users (
    username       TEXT PRIMARY KEY,
    role           TEXT NOT NULL CHECK (role IN ('operator', 'health', 'admin')),
    password_hash  TEXT NOT NULL,            -- argon2id, PHC string
    created_at     TEXT NOT NULL,
    disabled       INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE user_sites (
    username  TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    site_id   TEXT NOT NULL,
    PRIMARY KEY (username, site_id)
) WITHOUT ROWID;

-- Only a hash of the session token is kept: a copy of the database logs no one in.
CREATE TABLE sessions (
    token_hash  TEXT PRIMARY KEY,
    username    TEXT NOT NULL REFERENCES users (username) ON DELETE CASCADE,
    csrf        TEXT NOT NULL,
    created_s   INTEGER NOT NULL,
    expires_s   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX sessions_expiry ON sessions (expires_s);
