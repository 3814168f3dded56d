//! Integration tests of the bootstrapper against a real PostgreSQL and a real nats-server, each test
//! with servers of its own.

mod cli;
mod drift;
mod fresh;
mod unreachable;

use bootstrapper::Config;
use testkit::{NatsServer, Postgres};

/// A PostgreSQL and a nats-server for one test, stopped when it ends.
struct Servers {
    postgres: Postgres,
    nats: NatsServer,
}

impl Servers {
    fn start() -> Servers {
        testkit::init_tracing();
        Servers {
            postgres: Postgres::start().expect("PostgreSQL starts"),
            nats: NatsServer::start().expect("nats-server starts"),
        }
    }

    /// The bootstrapper's configuration for these servers.
    fn config(&self) -> Config {
        Config {
            eventstore_database_url: self.postgres.url("eventstoredb"),
            orders_database_url: self.postgres.url("ordersdb"),
            payments_database_url: self.postgres.url("paymentsdb"),
            nats_url: self.nats.url(),
            connect_timeout_secs: 5,
            ..Config::default()
        }
    }

    async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.nats.url())
            .await
            .expect("NATS connects");
        async_nats::jetstream::new(client)
    }

    async fn sql(&self, database: &str) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.postgres.url(database))
            .await
            .expect("PostgreSQL connects")
    }
}

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> u16 {
    testkit::free_port()
}
