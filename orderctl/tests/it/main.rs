//! Integration tests of orderctl against a real nats-server (and, for `events`, a real event store
//! on PostgreSQL; for `load` and the order commands, the whole pipeline in this process).

mod dead_letters;
mod events;
mod harness;
mod load;
