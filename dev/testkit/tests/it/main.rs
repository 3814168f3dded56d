//! The test kit's own tests: the servers start, stop, come back with their data, and clean up.

mod drain;
mod nats;
mod nats_cluster;
mod patroni;
mod postgres;
mod procfs;
mod support;
mod zipkin;
