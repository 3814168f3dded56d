//! One test's world: the shared pipeline stack with `paymentsdb` next to the event store.

use std::ops::Deref;

use pipeline_harness::{Schema, Setup};

pub use pipeline_harness::{Running, money};

/// paymentworker's own database.
pub const PAYMENTS: Schema = Schema {
    database: "paymentsdb",
    migrator: &paymentworker::MIGRATOR,
};

pub struct Stack {
    base: pipeline_harness::Stack,
    pub payments_url: String,
    pub payments: sqlx::PgPool,
}

impl Stack {
    /// Servers, `eventstoredb` and `paymentsdb`, streams and consumers, and an event store.
    pub async fn start() -> Stack {
        Stack::start_with_patience(Setup::default().patience).await
    }

    /// [`Stack::start`], its `wait_*` helpers waiting up to `patience`.
    pub async fn start_with_patience(patience: std::time::Duration) -> Stack {
        let base = pipeline_harness::Stack::start_with(Setup {
            databases: &[PAYMENTS],
            patience,
            ..Setup::default()
        })
        .await;
        let payments_url = base.database_url(PAYMENTS);
        let payments = base.pool(PAYMENTS).await;
        Stack {
            base,
            payments_url,
            payments,
        }
    }
}

impl Deref for Stack {
    type Target = pipeline_harness::Stack;

    fn deref(&self) -> &pipeline_harness::Stack {
        &self.base
    }
}
