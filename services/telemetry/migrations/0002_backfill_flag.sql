-- Whether a point came from an agent's backfill (heartbeats it could not send live and replayed
-- later), so charts can tell replayed readings from live ones. Rows written before this column
-- existed read as live; `rebuild timeseries` restores the flag from the stream where it is retained.
ALTER TABLE heartbeat_metrics ADD COLUMN backfill boolean NOT NULL DEFAULT false;
-- Charts look backfilled points up separately: few rows, so a small partial index keeps that cheap.
CREATE INDEX heartbeat_metrics_backfill ON heartbeat_metrics (device_id, ts) WHERE backfill;
