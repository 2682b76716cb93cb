-- The durable command queue: one row per command, its whole lifecycle and result.
CREATE TABLE commands (
    command_id      text PRIMARY KEY,              -- UUIDv7: sorts by creation time
    workspace_id    text NOT NULL,
    device_id       text NOT NULL,
    command_type    text NOT NULL,
    parameters      jsonb NOT NULL DEFAULT '{}',
    state           text NOT NULL CHECK (state IN
                        ('queued', 'sent', 'delivered', 'succeeded', 'failed', 'expired', 'cancelled')),
    created_at      timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    sent_at         timestamptz,
    delivered_at    timestamptz,
    finished_at     timestamptz,
    attempts        integer NOT NULL DEFAULT 0,
    via             text,
    result          jsonb,
    error           text,
    output          text,
    reported_status text,                          -- the device's own word (S "timeout", K "completed")
    executed_at     timestamptz,
    duration_ms     double precision,
    created_by      text NOT NULL,
    finished_by     text,                          -- who cancelled, or device:<id> for a result
    idempotency_key text,
    request_hash    text,                          -- what a retry under the same key must repeat
    reply_status    integer,                       -- the first answer, repeated to retries
    reply           jsonb
);
-- One command per workspace and idempotency key.
CREATE UNIQUE INDEX commands_idempotency ON commands (workspace_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- A device's history, newest first.
CREATE INDEX commands_device_history ON commands (device_id, created_at DESC, command_id DESC);
-- A device's open commands, oldest first (its FIFO).
CREATE INDEX commands_device_open ON commands (device_id, created_at, command_id)
    WHERE state IN ('queued', 'sent', 'delivered');
-- The expiry sweeper's next deadlines.
CREATE INDEX commands_expiry ON commands (expires_at) WHERE state IN ('queued', 'sent', 'delivered');
