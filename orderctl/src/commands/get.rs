//! `orderctl get ORDER_ID`.

use std::io::Write;

use uuid::Uuid;

use crate::Endpoints;
use crate::format::render_order;

/// Print an order from the read model.
#[derive(Debug, clap::Args)]
pub struct Get {
    /// The order's id (a UUID).
    pub order_id: Uuid,
    /// Print the API's JSON answer instead of a summary.
    #[arg(long)]
    pub json: bool,
}

impl Get {
    pub async fn run(&self, endpoints: &Endpoints, out: &mut impl Write) -> anyhow::Result<()> {
        let order = endpoints.api()?.order(self.order_id, None).await?;
        if self.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&order)?)?;
        } else {
            write!(out, "{}", render_order(&order))?;
        }
        Ok(())
    }
}
