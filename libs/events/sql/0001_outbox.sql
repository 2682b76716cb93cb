-- The outbox and the idempotency records every service schema carries (DESIGN.md §2, §3).
-- Runs with search_path set to the service's schema.

CREATE TABLE IF NOT EXISTS outbox (
    id          bigserial PRIMARY KEY,
    stream      text        NOT NULL,
    envelope_id uuid        NOT NULL UNIQUE,
    type        text        NOT NULL,
    envelope    bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS processed_events (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);

-- Wake the relay at commit time; the channel is per schema so services sharing a database
-- do not wake each other.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox_' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
