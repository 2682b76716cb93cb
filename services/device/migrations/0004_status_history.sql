-- Every presence transition of a device (the portal's status timeline), projected from
-- device.status_changed events on events:device (kept forever, so it can always be rebuilt).
CREATE TABLE status_history (
    event_id     uuid PRIMARY KEY,
    device_id    text NOT NULL,
    workspace_id text NOT NULL,
    status       text NOT NULL,
    previous     text NOT NULL,
    reason       text NOT NULL,
    at           timestamptz NOT NULL
);
CREATE INDEX status_history_device ON status_history (device_id, at DESC);
