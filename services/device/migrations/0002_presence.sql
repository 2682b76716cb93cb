-- Presence (online / late / offline): per-device state folded from heartbeats and connections,
-- the deadlines the sweeper waits for, and per-workspace heartbeat settings.
ALTER TABLE devices ADD COLUMN metrics jsonb NOT NULL DEFAULT '{}';

CREATE TABLE presence (
    device_id     text PRIMARY KEY,
    workspace_id  text NOT NULL,
    status        text NOT NULL DEFAULT 'offline',
    reason        text NOT NULL DEFAULT 'never_seen',
    last_seen     timestamptz,
    last_seq      bigint,
    last_time     timestamptz,
    late_at       timestamptz,
    offline_at    timestamptz,
    next_at       timestamptz,          -- least(late_at, offline_at): what the sweeper polls
    connected     boolean NOT NULL DEFAULT false,
    last_late     timestamptz,
    flap_window_s double precision NOT NULL DEFAULT 90,
    quiet_before  timestamptz           -- transitions dated before it are not reported (rebuilds)
);
CREATE INDEX presence_due ON presence (next_at) WHERE next_at IS NOT NULL;

-- Workspace defaults; a device's metadata (heartbeat_interval_s / heartbeat_timeout_s) overrides them,
-- and DEVICE_PRESENCE_INTERVAL_S / DEVICE_PRESENCE_TIMEOUT_S apply where neither says.
CREATE TABLE presence_workspaces (
    workspace_id         text PRIMARY KEY,
    heartbeat_interval_s double precision,
    heartbeat_timeout_s  double precision
);
