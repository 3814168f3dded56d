//! What several commands share: orders on the screen.

use order_domain::Money;
use orders_api::{CreatedOrder, Order, OrderItem};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// An order as the API returns it, one field a line.
pub fn render_order(order: &Order) -> String {
    let mut status = order.status.to_string();
    if order.refunded {
        status.push_str(" (refunded)");
    }
    if let Some(reason) = &order.reason {
        status.push_str(&format!(": {reason}"));
    }
    let mut out = header(
        order.order_id,
        &status,
        &order.customer_id,
        &order.restaurant_id,
        order.amount,
        order.version,
    );
    if let Some(trace_id) = &order.trace_id {
        out.push_str(&format!("trace id    {trace_id}\n"));
    }
    out.push_str(&format!("created on  {}\n", rfc3339(order.created_on)));
    out.push_str(&format!("updated at  {}\n", rfc3339(order.updated_at)));
    out.push_str(&items(&order.order_items));
    out
}

/// The answer of `POST /api/orders`, shown like [`render_order`].
pub fn render_created(order: &CreatedOrder) -> String {
    let mut out = header(
        order.order_id,
        order.status.as_str(),
        &order.customer_id,
        &order.restaurant_id,
        order.amount,
        order.version,
    );
    out.push_str(&format!("created on  {}\n", rfc3339(order.created_on)));
    out.push_str(&items(&order.order_items));
    out
}

fn header(
    order_id: Uuid,
    status: &str,
    customer_id: &str,
    restaurant_id: &str,
    amount: Money,
    version: i64,
) -> String {
    format!(
        "order       {order_id}\nstatus      {status}\ncustomer    {customer_id}\nrestaurant  {restaurant_id}\namount      {amount}\nversion     {version}\n",
    )
}

fn items(items: &[OrderItem]) -> String {
    let mut out = "items\n".to_owned();
    for item in items {
        out.push_str(&format!(
            "  {:<10} {:<24} {:>4} x {}\n",
            item.code, item.name, item.quantity, item.unit_price,
        ));
    }
    out
}

/// A time as the API sent it.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_else(|_| at.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_order_is_shown_with_its_status_reason_and_items() {
        let order: Order = serde_json::from_value(serde_json::json!({
            "order_id": "67e55044-10b1-426f-9247-bb680e5fe0c8",
            "customer_id": "c1", "restaurant_id": "r1",
            "status": "Rejected", "refunded": true, "reason": "amount too high",
            "amount": "600.00", "version": 4, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "created_on": "2026-12-07T03:00:00.123456Z", "updated_at": "2026-12-07T03:00:01Z",
            "order_items": [{"code": "p1", "name": "Pizza", "unit_price": "600.00", "quantity": 1}],
        }))
        .expect("an order as the API answers it");
        let shown = render_order(&order);
        assert!(
            shown.contains("status      Rejected (refunded): amount too high"),
            "{shown}"
        );
        assert!(
            shown.contains("trace id    4bf92f3577b34da6a3ce929d0e0e4736"),
            "{shown}"
        );
        assert!(shown.contains("Pizza"), "{shown}");
        assert!(
            shown.contains("created on  2026-12-07T03:00:00.123456Z"),
            "{shown}"
        );
    }
}
