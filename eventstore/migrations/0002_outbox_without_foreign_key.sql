-- The outbox's foreign key to events goes: the statement that appends events writes their outbox
-- rows from its own RETURNING (eventstore/src/store.rs), events are never deleted, and nothing else
-- writes the outbox, so no row can lack its event. The key was checked row by row at every append:
-- a lookup and a row lock (FOR KEY SHARE) on each event just inserted. Without it the whole
-- pipeline carried more orders per CPU second (BENCHMARKS.md, 2026-12-07 evening).
-- PostgreSQL names an inline REFERENCES `<table>_<column>_fkey`. CockroachDB's name for it has not
-- been checked here: where it differs, IF EXISTS leaves the key in place (slower, still correct).
ALTER TABLE outbox DROP CONSTRAINT IF EXISTS outbox_event_id_fkey;
