//! `orderctl deadlines [--within 10s]`: the open orders past their deadline, or near it.
//!
//! Read from the read model (ordersdb) with deadlinewatcher's own query and the same variables
//! (`PAYMENT_DEADLINE`, `REVIEW_DEADLINE`, `ORDERS_DATABASE_URL`, same defaults): the HTTP API
//! serves a customer's orders, it has no view of every open order, and this question is about the
//! pipeline, not about one customer. The read model may be behind the event store: an order listed
//! as overdue may have moved on; the watcher decides on the event store's history.

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use deadlinewatcher::{DEFAULT_ORDERS_DATABASE_URL, DeadlineArgs, scan};
use order_domain::{Due, format_duration};
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use order_domain::parse_duration;

/// List the open orders past their deadline or due within `--within`, soonest first.
#[derive(Debug, clap::Args)]
pub struct Deadlines {
    /// Also list the orders whose deadline falls within this long from now (`0s`: only the
    /// overdue ones).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub within: Duration,
    /// At most this many orders.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub limit: u32,
    /// Print the orders as a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The deadlines deadlinewatcher works with (`PAYMENT_DEADLINE`, `REVIEW_DEADLINE`): give
    /// orderctl the same values.
    #[command(flatten)]
    pub deadlines: DeadlineArgs,
    /// The read model (`ORDERS_DATABASE_URL`), read only.
    #[arg(
        long,
        env = "ORDERS_DATABASE_URL",
        default_value = DEFAULT_ORDERS_DATABASE_URL,
        hide_env_values = true
    )]
    pub orders_database_url: String,
}

/// One listed order.
struct Row {
    order: scan::OpenOrder,
    due: Due,
}

impl Deadlines {
    pub async fn run(&self, out: &mut impl Write) -> anyhow::Result<()> {
        let pool = pipeline_runtime::db::lazy_pool(&self.orders_database_url, 1, crate::TIMEOUT)
            .context("ORDERS_DATABASE_URL")?;
        let now = OffsetDateTime::now_utc();
        let by = now
            .saturating_add(time::Duration::try_from(self.within).unwrap_or(time::Duration::MAX));
        let found = scan::due_by(
            &pool,
            &self.deadlines.deadlines(),
            by,
            i64::from(self.limit),
        )
        .await;
        pool.close().await;
        let rows: Vec<Row> = found
            .with_context(|| {
                format!(
                    "cannot read the open orders at {}",
                    pipeline_runtime::db::redact(&self.orders_database_url)
                )
            })?
            .into_iter()
            .map(|(order, due)| Row { order, due })
            .collect();
        if self.json {
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&to_json(&rows, now))?
            )?;
        } else {
            render(&rows, now, self.within, out)?;
        }
        Ok(())
    }
}

fn timestamp(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

/// `overdue by 4.2s` or `in 7.8s`.
fn relative(due: &Due, now: OffsetDateTime) -> String {
    let seconds = (due.at - now).as_seconds_f64();
    if seconds <= 0.0 {
        format!("overdue by {:.1}s", -seconds)
    } else {
        format!("in {seconds:.1}s")
    }
}

fn to_json(rows: &[Row], now: OffsetDateTime) -> serde_json::Value {
    rows.iter()
        .map(|row| {
            json!({
                "order_id": row.order.order_id,
                "customer_id": row.order.customer_id,
                "status": row.order.status.as_str(),
                "version": row.order.version,
                "waits_for": row.due.step.as_str(),
                "since": timestamp(row.order.since),
                "deadline": format_duration(row.due.deadline),
                "due_at": timestamp(row.due.at),
                "overdue": row.due.is_overdue(now),
            })
        })
        .collect()
}

fn render(
    rows: &[Row],
    now: OffsetDateTime,
    within: Duration,
    out: &mut impl Write,
) -> std::io::Result<()> {
    if rows.is_empty() {
        return writeln!(
            out,
            "no open order is past its deadline or due within {}",
            format_duration(within)
        );
    }
    writeln!(
        out,
        "{:<36}  {:<7}  {:<9}  {:<8}  {:<30}  DUE",
        "ORDER ID", "STATUS", "WAITS FOR", "DEADLINE", "SINCE"
    )?;
    for row in rows {
        writeln!(
            out,
            "{:<36}  {:<7}  {:<9}  {:<8}  {:<30}  {}",
            row.order.order_id,
            row.order.status.as_str(),
            row.due.step.as_str(),
            format_duration(row.due.deadline),
            timestamp(row.order.since),
            relative(&row.due, now)
        )?;
    }
    let overdue = rows.iter().filter(|row| row.due.is_overdue(now)).count();
    if overdue > 0 {
        writeln!(
            out,
            "{overdue} past the deadline: deadlinewatcher cancels them within its scan interval; \
             if they stay, is it running, and can it reach the event store?"
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use order_domain::{Deadlines, OrderStatus};
    use uuid::Uuid;

    use super::*;

    #[test]
    fn overdue_and_upcoming_orders_read_as_a_table_with_a_hint() {
        let now = OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("a time");
        let deadlines = Deadlines::DEFAULT;
        let row = |status: OrderStatus, seconds_ago: i64| {
            let since = now - time::Duration::seconds(seconds_ago);
            Row {
                order: scan::OpenOrder {
                    order_id: Uuid::nil(),
                    customer_id: "c1".into(),
                    status,
                    version: 1,
                    since,
                },
                due: deadlines.due(status, since).expect("open"),
            }
        };
        let rows = [row(OrderStatus::Pending, 34), row(OrderStatus::Paid, 52)];
        let mut out = Vec::new();
        render(&rows, now, Duration::from_secs(10), &mut out).expect("written");
        let text = String::from_utf8(out).expect("UTF-8");
        assert!(text.contains("Pending  payment    30s"), "{text}");
        assert!(text.contains("overdue by 4.0s"), "{text}");
        assert!(text.contains("Paid     review     1m"), "{text}");
        assert!(text.contains("in 8.0s"), "{text}");
        assert!(text.contains("1 past the deadline"), "{text}");
        let json = to_json(&rows, now);
        assert_eq!(json[0]["waits_for"], "payment");
        assert_eq!(json[0]["overdue"], true);
        assert_eq!(json[1]["overdue"], false);

        let mut out = Vec::new();
        render(&[], now, Duration::from_secs(10), &mut out).expect("written");
        assert_eq!(
            String::from_utf8(out).expect("UTF-8"),
            "no open order is past its deadline or due within 10s\n"
        );
    }
}
