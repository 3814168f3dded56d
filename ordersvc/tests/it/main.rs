//! Integration tests of ordersvc against real PostgreSQL, nats-server and the in-process event store.

mod auth;
mod cancel;
mod create;
mod fuzzed;
mod harness;
mod health;
mod jwks_url;
mod openapi;
mod overload;
mod read;
