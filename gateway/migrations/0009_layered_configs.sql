-- 0009: mark desired configs made by layering site defaults and device overrides over a
-- device's base (its newest config pushed whole: provisioning, push-config). Layering starts
-- from the base, never from an earlier layered config, so a cleared default reverts.
-- Rows stored before this migration count as bases.
ALTER TABLE desired_configs ADD COLUMN layered INTEGER NOT NULL DEFAULT 0;
