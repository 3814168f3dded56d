-- The event store: every event of every aggregate, and the outbox of events not yet on JetStream.
-- Only SQL that both CockroachDB and PostgreSQL accept.

CREATE TABLE IF NOT EXISTS events (
    event_id          UUID        PRIMARY KEY,
    event_type        TEXT        NOT NULL,
    aggregate_id      TEXT        NOT NULL,
    aggregate_type    TEXT        NOT NULL,
    aggregate_version INT8        NOT NULL,
    event_data        JSONB       NOT NULL,
    stream            TEXT        NOT NULL,
    metadata          JSONB       NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL,
    -- Optimistic concurrency: two writers that saw the same version cannot both append after it.
    CONSTRAINT events_aggregate_version_key UNIQUE (aggregate_id, aggregate_version)
);

-- Reading every event in commit-time order (GetEventsStream without an aggregate).
CREATE INDEX IF NOT EXISTS events_by_created_at ON events (created_at, event_id);

-- Written in the same transaction as the event; deleted by the relay once JetStream acknowledged it.
CREATE TABLE IF NOT EXISTS outbox (
    event_id          UUID        PRIMARY KEY REFERENCES events (event_id),
    aggregate_id      TEXT        NOT NULL,
    aggregate_version INT8        NOT NULL,
    created_at        TIMESTAMPTZ NOT NULL
);

CREATE INDEX IF NOT EXISTS outbox_by_aggregate ON outbox (aggregate_id, aggregate_version);
