//! `orderctl cancel ORDER_ID`.

use std::io::Write;

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
        writeln!(
            out,
            "order {} cancelled (version {})",
            self.order_id, answer.version
        )?;
        Ok(())
    }
}
