-- The registry: sites and devices of every workspace (device and site ids are global).
CREATE TABLE sites (
    site_id      text PRIMARY KEY,
    workspace_id text NOT NULL,
    name         text NOT NULL,
    location     text,
    description  text,
    created_at   timestamptz NOT NULL
);
CREATE INDEX sites_workspace ON sites (workspace_id, created_at DESC);

CREATE TABLE devices (
    device_id     text PRIMARY KEY,
    workspace_id  text NOT NULL,
    name          text NOT NULL,
    device_type   text NOT NULL,
    site_id       text REFERENCES sites (site_id),
    groups        text[] NOT NULL DEFAULT '{}',
    labels        jsonb NOT NULL DEFAULT '{}',
    metadata      jsonb NOT NULL DEFAULT '{}',
    disabled      boolean NOT NULL DEFAULT false,
    status        text NOT NULL DEFAULT 'offline',
    status_reason text NOT NULL DEFAULT 'never_seen',
    last_seen     timestamptz,
    ip_address    text,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    deleted_at    timestamptz
);
-- Listings: one workspace's live devices, newest first.
CREATE INDEX devices_workspace_created ON devices (workspace_id, created_at DESC, device_id DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX devices_groups ON devices USING gin (groups) WHERE deleted_at IS NULL;
CREATE INDEX devices_labels ON devices USING gin (labels jsonb_path_ops) WHERE deleted_at IS NULL;
