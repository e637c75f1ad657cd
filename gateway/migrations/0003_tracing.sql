-- 0003: sites, zones, trips, shifts, presence intervals (stays), the audit log;
-- check-ins keep only sealed personal fields.

-- The plain identity column goes: the gateway stores only what the device sealed.
ALTER TABLE checkins DROP COLUMN personal;
ALTER TABLE checkins ADD COLUMN sealed TEXT;
ALTER TABLE checkins ADD COLUMN initials TEXT NOT NULL DEFAULT '';
ALTER TABLE checkins ADD COLUMN scanned_s INTEGER NOT NULL DEFAULT 0;
CREATE INDEX checkins_received ON checkins (received_at);

CREATE TABLE sites (
    site_id          TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    category         TEXT NOT NULL,
    address          TEXT NOT NULL DEFAULT '',
    province         TEXT NOT NULL DEFAULT '',
    district         TEXT NOT NULL DEFAULT '',
    commune          TEXT NOT NULL DEFAULT '',
    default_stay_s   INTEGER NOT NULL,
    threshold_s      INTEGER            -- NULL: the category's contact threshold
);

CREATE TABLE zones (
    site_id  TEXT NOT NULL REFERENCES sites (site_id),
    zone_id  TEXT NOT NULL,
    name     TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (site_id, zone_id)
) WITHOUT ROWID;

ALTER TABLE devices ADD COLUMN zone_id TEXT NOT NULL DEFAULT '';

-- Trips of a vehicle (a site of category 'vehicle'): from the device or the schedule.
CREATE TABLE trips (
    trip_id     INTEGER PRIMARY KEY,
    site_id     TEXT NOT NULL REFERENCES sites (site_id),
    start_s     INTEGER NOT NULL,
    end_s       INTEGER,
    source      TEXT NOT NULL
);
CREATE INDEX trips_site_time ON trips (site_id, start_s);

-- Daily shifts of a site, local wall-clock times 'HH:MM' (end before start: overnight).
CREATE TABLE shifts (
    site_id  TEXT NOT NULL REFERENCES sites (site_id),
    name     TEXT NOT NULL,
    starts   TEXT NOT NULL,
    ends     TEXT NOT NULL,
    PRIMARY KEY (site_id, name)
) WITHOUT ROWID;

-- Presence intervals built from check-ins; times in epoch seconds (UTC).
CREATE TABLE stays (
    id          INTEGER PRIMARY KEY,
    subject     TEXT NOT NULL,
    site_id     TEXT NOT NULL,
    zone_id     TEXT NOT NULL DEFAULT '',
    trip_id     INTEGER,
    start_s     INTEGER NOT NULL,
    end_s       INTEGER NOT NULL,
    start_rule  TEXT NOT NULL,   -- entry | exit_minus_default
    end_rule    TEXT NOT NULL,   -- exit | next_checkin | trip_end | shift_end | default_stay
    entry_id    INTEGER,         -- checkins.id of the scans that made it
    exit_id     INTEGER
);
CREATE INDEX stays_subject_time ON stays (subject, start_s);
CREATE INDEX stays_place_time ON stays (site_id, start_s);

CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY,
    at       TEXT NOT NULL,
    actor    TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT NOT NULL,
    purpose  TEXT NOT NULL,
    detail   TEXT NOT NULL DEFAULT ''
);
