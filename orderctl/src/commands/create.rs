//! `orderctl create`.

use std::io::{Read as _, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use orders_api::{OrderItemRequest, OrderRequest, UnitPrice};
use serde_json::Value;

use crate::Endpoints;
use crate::format::render_created;

/// Place an order: from flags, or the request body in a JSON file.
#[derive(Debug, clap::Args)]
pub struct Create {
    /// The customer's id.
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    pub customer: Option<String>,
    /// The restaurant's id.
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    pub restaurant: Option<String>,
    /// An item as CODE:NAME:PRICE:QTY (e.g. `p1:Pizza:12.50:2`); repeat for more items.
    #[arg(long = "item", value_name = "CODE:NAME:PRICE:QTY", value_parser = parse_item,
          required_unless_present = "file", conflicts_with = "file")]
    pub items: Vec<OrderItemRequest>,
    /// The whole request body as JSON (`-` reads standard input), e.g.
    /// `{"customer_id":"c1","restaurant_id":"r1","order_items":[...]}`.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Sent as `Idempotency-Key`: the same key and body give back the same order.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Print the API's JSON answer instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// `CODE:NAME:PRICE:QTY`; the name may itself hold colons. The price stays text: the API checks it
/// exactly (at most two decimals), which a float could not.
pub fn parse_item(text: &str) -> Result<OrderItemRequest, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let [code, name @ .., price, quantity] = parts.as_slice() else {
        return Err(format!("{text:?} is not CODE:NAME:PRICE:QTY"));
    };
    if name.is_empty() {
        return Err(format!("{text:?} is not CODE:NAME:PRICE:QTY"));
    }
    let quantity: u32 = quantity
        .parse()
        .map_err(|_| format!("quantity {quantity:?} is not a whole number"))?;
    Ok(OrderItemRequest {
        code: (*code).to_owned(),
        name: name.join(":"),
        unit_price: UnitPrice::Text((*price).to_owned()),
        quantity,
    })
}

impl Create {
    /// The request body: an [`OrderRequest`] from the flags, or the file's JSON as it is (the API
    /// judges it, and says what is wrong with each field).
    pub fn body(&self) -> anyhow::Result<Value> {
        if let Some(path) = &self.file {
            let text = if path.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text)?;
                text
            } else {
                std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?
            };
            return serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()));
        }
        let request = OrderRequest {
            customer_id: self.customer.clone().unwrap_or_default(),
            restaurant_id: self.restaurant.clone().unwrap_or_default(),
            order_items: self.items.clone(),
        };
        Ok(serde_json::to_value(request)?)
    }

    pub async fn run(&self, endpoints: &Endpoints, out: &mut impl Write) -> anyhow::Result<()> {
        let body = self.body()?;
        let api = endpoints.api()?;
        let order = api.place(&body, self.idempotency_key.as_deref()).await?;
        if self.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&order)?)?;
        } else {
            write!(out, "{}", render_created(&order))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_item_is_code_name_price_and_quantity_and_the_name_may_hold_colons() {
        assert_eq!(
            parse_item("p1:Pizza:12.50:2").map(|item| serde_json::to_value(item).expect("json")),
            Ok(json!({"code": "p1", "name": "Pizza", "unit_price": "12.50", "quantity": 2}))
        );
        assert_eq!(
            parse_item("d1:Menu: the big one:9:1").map(|item| item.name),
            Ok("Menu: the big one".to_owned())
        );
        assert!(parse_item("p1:Pizza:12.50").is_err());
        assert!(parse_item("p1:Pizza:12.50:two").is_err());
    }
}
