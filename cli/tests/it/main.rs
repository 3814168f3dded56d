//! Integration tests of orderctl against a real nats-server (and, for `events`, a real event store
//! on PostgreSQL).

mod dead_letters;
mod events;
mod harness;
