-- 0005 provisioning: when a device was provisioned and when it was revoked.
-- A revoked device's row stays (its check-ins still matter for tracing); the
-- gateway refuses anything it sends from then on.
ALTER TABLE devices ADD COLUMN provisioned_at TEXT;
ALTER TABLE devices ADD COLUMN revoked_at TEXT;
