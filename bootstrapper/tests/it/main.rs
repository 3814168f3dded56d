//! Integration tests of the bootstrapper against a real PostgreSQL and a real nats-server, each test
//! with servers of its own.

mod cli;
mod drift;
mod fresh;
mod roles;
mod unreachable;

use bootstrapper::Config;
use testkit::{NatsServer, Postgres};

/// A PostgreSQL and a nats-server for one test, stopped when it ends.
struct Servers {
    postgres: Option<Postgres>,
    nats: NatsServer,
}

impl Servers {
    fn start() -> Servers {
        testkit::init_tracing();
        Servers {
            postgres: Some(Postgres::start().expect("PostgreSQL starts")),
            nats: NatsServer::start().expect("nats-server starts"),
        }
    }

    /// Only a nats-server, for tests of streams and consumers: the configuration skips SQL.
    fn nats_only() -> Servers {
        testkit::init_tracing();
        Servers {
            postgres: None,
            nats: NatsServer::start().expect("nats-server starts"),
        }
    }

    fn postgres(&self) -> &Postgres {
        self.postgres
            .as_ref()
            .expect("this test started PostgreSQL")
    }

    /// The bootstrapper's configuration for these servers.
    fn config(&self) -> Config {
        let mut config = Config {
            nats: pipeline_runtime::nats::NatsArgs::new(self.nats.url()),
            connect_timeout_secs: 5,
            skip_sql: self.postgres.is_none(),
            ..Config::default()
        };
        if let Some(postgres) = &self.postgres {
            config.eventstore_database_url = postgres.url("eventstoredb").into();
            config.orders_database_url = postgres.url("ordersdb").into();
            config.payments_database_url = postgres.url("paymentsdb").into();
        }
        config
    }

    async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::connect(self.nats.url())
            .await
            .expect("NATS connects");
        async_nats::jetstream::new(client)
    }

    async fn sql(&self, database: &str) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.postgres().url(database))
            .await
            .expect("PostgreSQL connects")
    }
}

/// A port on 127.0.0.1 that nothing listens on.
fn closed_port() -> u16 {
    testkit::free_port()
}

/// How many migrations `context` has, i.e. how many a first run applies.
fn migrations(context: bootstrapper::Context) -> usize {
    context.migrations().iter().count()
}
