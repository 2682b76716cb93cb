-- Presence keeps everything it shows in its own row, written once per device per batch: the
-- registry reads status, reason, last_seen and metrics from it (they were mirrored into devices,
-- a second row written per heartbeat). Each row also remembers the last stream entry it applied
-- from each source stream, which makes redelivery harmless without a processed_events row per
-- heartbeat, and the agent run (boot) and socket (connection_id) of its last signals.
ALTER TABLE presence
    ADD COLUMN metrics       jsonb,
    ADD COLUMN boot          text,
    ADD COLUMN connection_id text,
    ADD COLUMN hb_entry      text,
    ADD COLUMN gw_entry      text;

UPDATE presence p SET metrics = d.metrics FROM devices d WHERE d.device_id = p.device_id AND d.metrics <> '{}';

ALTER TABLE devices
    DROP COLUMN status,
    DROP COLUMN status_reason,
    DROP COLUMN last_seen,
    DROP COLUMN metrics;

CREATE INDEX presence_workspace_status ON presence (workspace_id, status);
