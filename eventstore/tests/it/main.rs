//! Integration tests of the event store against a real PostgreSQL and a real nats-server.

mod append;
mod batch;
mod failures;
mod harness;
mod hostile;
mod mtls;
mod outbox;
mod reads;
mod startup;
mod tls;
