-- The time series: one row per heartbeat (its numeric, plausible metrics), and 1-minute and 1-hour
-- rollups per metric maintained in the same statement as the rows they summarise.
CREATE TABLE heartbeat_metrics (
    event_id uuid NOT NULL,
    device_id text NOT NULL,
    workspace_id text NOT NULL,
    ts timestamptz NOT NULL,
    seq bigint,
    sent_at timestamptz,
    status text NOT NULL,
    metrics jsonb NOT NULL,
    PRIMARY KEY (device_id, ts, event_id)
);
-- An agent's retry of one heartbeat (same seq and sent time) is one point, not two.
CREATE UNIQUE INDEX heartbeat_metrics_agent_seq ON heartbeat_metrics (device_id, seq, sent_at)
    WHERE seq IS NOT NULL;
CREATE INDEX heartbeat_metrics_ts ON heartbeat_metrics (ts);

CREATE TABLE metric_rollup_1m (
    device_id text NOT NULL,
    name text NOT NULL,
    bucket timestamptz NOT NULL,
    workspace_id text NOT NULL,
    n bigint NOT NULL,
    total double precision NOT NULL,
    lo double precision NOT NULL,
    hi double precision NOT NULL,
    PRIMARY KEY (device_id, name, bucket)
);
CREATE INDEX metric_rollup_1m_bucket ON metric_rollup_1m (bucket);

CREATE TABLE metric_rollup_1h (LIKE metric_rollup_1m INCLUDING ALL);
