-- 0001: devices, delivery streams, check-ins and refused messages.
CREATE TABLE devices (
    device_id   TEXT PRIMARY KEY,
    site_id     TEXT NOT NULL,
    gate        TEXT NOT NULL DEFAULT '',
    direction   TEXT NOT NULL DEFAULT 'in',
    status      TEXT NOT NULL DEFAULT 'unknown',
    status_at   TEXT,
    last_seen   TEXT,
    firmware    TEXT NOT NULL DEFAULT ''
);

-- One row per device outbox: everything up to acked_upto is in checkins.
CREATE TABLE streams (
    device_id   TEXT NOT NULL REFERENCES devices (device_id),
    stream      TEXT NOT NULL,
    acked_upto  INTEGER NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (device_id, stream)
) WITHOUT ROWID;

CREATE TABLE checkins (
    id          INTEGER PRIMARY KEY,
    device_id   TEXT NOT NULL REFERENCES devices (device_id),
    stream      TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    site_id     TEXT NOT NULL,
    scanned_at  TEXT NOT NULL,
    received_at TEXT NOT NULL,
    direction   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    accepted    INTEGER NOT NULL,
    reason      TEXT NOT NULL,
    subject     TEXT,
    personal    TEXT,
    warnings    TEXT NOT NULL DEFAULT '[]',
    UNIQUE (device_id, stream, seq)
);
CREATE INDEX checkins_subject_time ON checkins (subject, scanned_at);
CREATE INDEX checkins_site_time ON checkins (site_id, scanned_at);

CREATE TABLE rejected_messages (
    id          INTEGER PRIMARY KEY,
    received_at TEXT NOT NULL,
    topic       TEXT NOT NULL,
    device_id   TEXT,
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    size        INTEGER NOT NULL
);
