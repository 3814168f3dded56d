//! `orderctl watch ORDER_ID`.

use std::io::Write;
use std::time::Duration;

use order_domain::OrderStatus;
use orders_api::Order;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::time::Instant;
use uuid::Uuid;

use crate::Endpoints;
use crate::api::ApiError;
use order_domain::parse_duration;

/// Follow an order until its status is final (Approved, PaymentFailed, Rejected or Cancelled),
/// printing each change.
#[derive(Debug, clap::Args)]
pub struct Watch {
    /// The order's id (a UUID).
    pub order_id: Uuid,
    /// Give up (exit code 1) if the order is not final by then.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// Pause after an error before asking again.
const RETRY_PAUSE: Duration = Duration::from_millis(250);

impl Watch {
    pub async fn run(&self, endpoints: &Endpoints, out: &mut impl Write) -> anyhow::Result<()> {
        let api = endpoints.api()?;
        let deadline = Instant::now() + self.timeout;
        let mut seen: Option<(OrderStatus, bool, i64)> = None;
        loop {
            // Ask for the next version: ordersvc holds the request until the read model has it (or
            // its wait runs out), so a watch costs one request per change, not a busy poll.
            let next = seen.as_ref().map_or(1, |(_, _, version)| version + 1);
            let asked =
                tokio::time::timeout_at(deadline, api.order(self.order_id, Some(next))).await;
            let order = match asked {
                Err(_elapsed) => break,
                Ok(Ok(order)) => order,
                // Not projected yet, or a hiccup: ask again until the deadline.
                Ok(Err(
                    ApiError::Status { status: 404, .. } | ApiError::Network(_) | ApiError::Timeout,
                )) => {
                    tokio::time::sleep_until((Instant::now() + RETRY_PAUSE).min(deadline)).await;
                    if Instant::now() >= deadline {
                        break;
                    }
                    continue;
                }
                Ok(Err(err)) => return Err(err.into()),
            };
            let Order {
                status,
                refunded,
                version,
                reason,
                ..
            } = order;
            let changed = seen
                .as_ref()
                .is_none_or(|(s, r, _)| *s != status || *r != refunded);
            if changed {
                let now = OffsetDateTime::now_utc()
                    .format(&Rfc3339)
                    .unwrap_or_default();
                let mut line = format!("{now}  v{version:<3} {status}");
                if refunded {
                    line.push_str(" (refunded)");
                }
                if let Some(reason) = reason {
                    line.push_str(&format!(": {reason}"));
                }
                writeln!(out, "{line}")?;
                out.flush()?;
            }
            let done = status.is_final();
            seen = Some((status, refunded, version));
            if done {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        match seen {
            Some((status, _, _)) => anyhow::bail!(
                "order {} is still {status} after {:?}",
                self.order_id,
                self.timeout
            ),
            None => anyhow::bail!(
                "order {} not found within {:?}",
                self.order_id,
                self.timeout
            ),
        }
    }
}
