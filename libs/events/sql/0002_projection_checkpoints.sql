-- Where a projection's last rebuild stopped, per stream: the live consumer skips entries at or
-- below it (the rebuild applied them), so a rebuild needs no processed_events row per event.
CREATE TABLE IF NOT EXISTS projection_checkpoints (
    consumer text        NOT NULL,
    stream   text        NOT NULL,
    entry_id text        NOT NULL,
    rebuilt_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, stream)
);
