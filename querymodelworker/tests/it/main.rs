//! Integration tests of querymodelworker against a real PostgreSQL, a real nats-server and an
//! in-process event store.

mod batch;
mod delivery;
mod harness;
mod paths;
mod rebuild;
