-- The raw chart query now returns each point's backfill flag itself (bounded by its per-metric
-- limit), so the separate lookup and its partial index are gone.
DROP INDEX IF EXISTS heartbeat_metrics_backfill;
