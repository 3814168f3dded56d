//! The test kit's ways of finding and running the servers, for the dev stack (dev/devstack),
//! which runs its own long-lived PostgreSQL and nats-server the same way.

pub use crate::nats::{
    NATS_FOLDERS, NATS_SERVER_BIN, NatsVersion, find_nats_server, spawn_logged, wait_ready,
};
pub use crate::postgres::{PgTools, find_tool as find_postgres_tool};
pub use crate::support::{port_accepts, process_alive, read_lossy, tail};
