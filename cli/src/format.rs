//! What several commands share: durations on the command line and orders on the screen.

use std::time::Duration;

use serde_json::Value;

/// The statuses after which an order never changes status again.
pub const FINAL_STATUSES: [&str; 4] = ["Approved", "PaymentFailed", "Rejected", "Cancelled"];

pub fn is_final(status: &str) -> bool {
    FINAL_STATUSES.contains(&status)
}

/// `30s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 500ms or 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use ms, s, m or h)"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))
}

fn text<'a>(order: &'a Value, field: &str) -> &'a str {
    order.get(field).and_then(Value::as_str).unwrap_or("-")
}

/// An order as the API returns it, one field a line.
pub fn render_order(order: &Value) -> String {
    let mut status = text(order, "status").to_owned();
    if order.get("refunded").and_then(Value::as_bool) == Some(true) {
        status.push_str(" (refunded)");
    }
    if let Some(reason) = order.get("reason").and_then(Value::as_str) {
        status.push_str(&format!(": {reason}"));
    }
    let version = order
        .get("version")
        .map_or_else(|| "-".to_owned(), Value::to_string);
    let mut out = format!(
        "order       {}\nstatus      {status}\ncustomer    {}\nrestaurant  {}\namount      {}\nversion     {version}\n",
        text(order, "order_id"),
        text(order, "customer_id"),
        text(order, "restaurant_id"),
        text(order, "amount"),
    );
    for field in ["trace_id", "created_on", "updated_at"] {
        if let Some(value) = order.get(field).and_then(Value::as_str) {
            out.push_str(&format!("{:<12}{value}\n", field.replace('_', " ")));
        }
    }
    if let Some(items) = order.get("order_items").and_then(Value::as_array) {
        out.push_str("items\n");
        for item in items {
            let quantity = item
                .get("quantity")
                .map_or_else(|| "?".to_owned(), Value::to_string);
            let price = match item.get("unit_price") {
                Some(Value::String(price)) => price.clone(),
                Some(other) => other.to_string(),
                None => "?".to_owned(),
            };
            out.push_str(&format!(
                "  {:<10} {:<24} {quantity:>4} x {price}\n",
                text(item, "code"),
                text(item, "name"),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_go_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("3 days").is_err());
    }

    #[test]
    fn an_order_is_shown_with_its_status_reason_and_items() {
        let order = serde_json::json!({
            "order_id": "67e55044-10b1-426f-9247-bb680e5fe0c8",
            "customer_id": "c1", "restaurant_id": "r1",
            "status": "Rejected", "refunded": true, "reason": "amount too high",
            "amount": "600.00", "version": 4, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "order_items": [{"code": "p1", "name": "Pizza", "unit_price": "600.00", "quantity": 1}],
        });
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
    }
}
