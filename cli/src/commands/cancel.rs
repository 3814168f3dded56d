//! `orderctl cancel ORDER_ID`.

use std::io::Write;

use serde_json::Value;
use uuid::Uuid;

use crate::Endpoints;

/// Cancel a Pending or Paid order (the API refuses with 409 once it is further on).
#[derive(Debug, clap::Args)]
pub struct Cancel {
    /// The order's id (a UUID).
    pub order_id: Uuid,
    /// Why; the API's default is "cancelled by customer".
    #[arg(long)]
    pub reason: Option<String>,
}

impl Cancel {
    pub async fn run(&self, endpoints: &Endpoints, out: &mut impl Write) -> anyhow::Result<()> {
        let answer = endpoints
            .api()?
            .cancel(self.order_id, self.reason.as_deref())
            .await?;
        let version = answer
            .get("version")
            .map_or_else(|| "?".to_owned(), Value::to_string);
        writeln!(out, "order {} cancelled (version {version})", self.order_id)?;
        Ok(())
    }
}
