//! `orderctl list --customer C`.

use std::io::Write;

use orders_api::{ListOrdersQuery, Order};

use crate::Endpoints;
use crate::format::rfc3339;

/// List a customer's orders, newest first.
#[derive(Debug, clap::Args)]
pub struct List {
    /// The customer's id.
    #[arg(long)]
    pub customer: String,
    /// Orders per page (the API allows 1 to 100, 20 when not given).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub limit: Option<u32>,
    /// Follow the `next` cursor to the last page.
    #[arg(long)]
    pub all: bool,
    /// Print the orders as a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Pages followed at most with `--all`: a cursor that never ends must not loop forever.
const MAX_PAGES: usize = 10_000;

impl List {
    pub async fn run(&self, endpoints: &Endpoints, out: &mut impl Write) -> anyhow::Result<()> {
        let api = endpoints.api()?;
        let mut orders: Vec<Order> = Vec::new();
        let mut query = ListOrdersQuery {
            customer_id: self.customer.clone(),
            limit: self.limit,
            after: None,
        };
        let mut more = false;
        for _ in 0..MAX_PAGES {
            let page = api.list(&query).await?;
            orders.extend(page.orders);
            more = page.next.is_some();
            query.after = page.next;
            if !self.all || !more {
                break;
            }
        }
        if self.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&orders)?)?;
            return Ok(());
        }
        if orders.is_empty() {
            writeln!(out, "customer {} has no orders", self.customer)?;
            return Ok(());
        }
        writeln!(
            out,
            "{:<36}  {:<13}  {:>10}  {:<8}  CREATED",
            "ORDER ID", "STATUS", "AMOUNT", "REFUNDED"
        )?;
        for order in &orders {
            let refunded = if order.refunded { "yes" } else { "" };
            writeln!(
                out,
                "{:<36}  {:<13}  {:>10}  {refunded:<8}  {}",
                order.order_id.to_string(),
                order.status.as_str(),
                order.amount.to_string(),
                rfc3339(order.created_on),
            )?;
        }
        if more {
            writeln!(out, "(more orders: --all follows every page)")?;
        }
        Ok(())
    }
}
