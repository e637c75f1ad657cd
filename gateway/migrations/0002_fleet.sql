-- 0002: desired config per device, and what devices report about themselves.
ALTER TABLE devices ADD COLUMN config_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE devices ADD COLUMN config_error TEXT NOT NULL DEFAULT '';
ALTER TABLE devices ADD COLUMN health TEXT;
ALTER TABLE devices ADD COLUMN health_at TEXT;

-- Every version ever pushed is kept: the newest per device is the desired one.
CREATE TABLE desired_configs (
    device_id   TEXT NOT NULL REFERENCES devices (device_id),
    version     INTEGER NOT NULL,
    settings    TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (device_id, version)
) WITHOUT ROWID;

ALTER TABLE checkins ADD COLUMN clock_synced INTEGER NOT NULL DEFAULT 1;
ALTER TABLE checkins ADD COLUMN credential_id TEXT NOT NULL DEFAULT '';
