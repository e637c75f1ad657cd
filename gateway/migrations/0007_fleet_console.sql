-- 0007: desired settings as site-wide defaults and per-device overrides (JSON patches
-- over DeviceSettings); each scope's patch is versioned by its revision.
CREATE TABLE settings_patches (
    scope_kind  TEXT NOT NULL CHECK (scope_kind IN ('site', 'device')),
    scope_id    TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    patch       TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (scope_kind, scope_id)
) WITHOUT ROWID;
