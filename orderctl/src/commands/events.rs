//! `orderctl events ORDER_ID`.

use std::io::Write;

use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use crate::Endpoints;

/// Print an order's events, oldest first: version, time, type, event id and data.
#[derive(Debug, clap::Args)]
pub struct Events {
    /// The order's id (a UUID).
    pub order_id: Uuid,
}

impl Events {
    pub async fn run(&self, endpoints: &Endpoints, out: &mut impl Write) -> anyhow::Result<()> {
        let client = endpoints.event_store()?;
        let events = client
            .events(&self.order_id.to_string())
            .await
            .map_err(|err| {
                anyhow::anyhow!(
                    "cannot read the event store at {}: {err}",
                    endpoints.eventstore_url
                )
            })?;
        anyhow::ensure!(!events.is_empty(), "order {} has no events", self.order_id);
        for event in events {
            let at = event
                .created_at
                .format(&Rfc3339)
                .unwrap_or_else(|_| event.created_at.to_string());
            writeln!(
                out,
                "{:>3}  {at}  {:<16} {}  {}",
                event.aggregate_version, event.event_type, event.event_id, event.event_data
            )?;
        }
        Ok(())
    }
}
