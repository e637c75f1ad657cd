-- 0004: indexes for tracing at province scale (docs/tracing.md, "Speed").

-- Per site, stays by length: the lookback of a site (how far back a stay meeting a probe
-- may start) is a short walk down from the longest, not a read of all its stays (a busy
-- market has 100k+), and the few longest are read apart from it. end_s and start_s are
-- there so that the long stays outside a trace window are skipped without their rows.
CREATE INDEX stays_place_len ON stays (site_id, end_s - start_s, end_s, start_s);

-- Candidates of a trace are read from the index alone: one range per site, zone and
-- time, with every column the tracer needs. The zone comes before the time: a factory
-- of 24 zones would otherwise read 24 zones' stays to keep one's. It replaces
-- stays_place_time (site_id, start_s); venue exposure reads it zone by zone.
CREATE INDEX stays_place_cover ON stays (
    site_id, zone_id, start_s, end_s, subject, trip_id, start_rule, end_rule
);
DROP INDEX stays_place_time;
