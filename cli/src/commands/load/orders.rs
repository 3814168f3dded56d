//! The orders a load run places: a mix that, with the default limits (wallets of 1000.00, review up
//! to 500.00), ends mostly Approved, some Rejected (over the review limit, refunded) and some
//! PaymentFailed (over any fresh wallet, or a wallet the run has drained).

use rand::Rng;
use serde_json::{Value, json};

const MENU: [(&str, &str); 6] = [
    ("p1", "Pizza"),
    ("p2", "Pasta"),
    ("s1", "Salad"),
    ("d1", "Tiramisu"),
    ("b1", "Lemonade"),
    ("b2", "Espresso"),
];

/// Cents as the API's decimal text: exact, no float on the way.
fn price(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// What an order is meant to test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A few items, 5.00 to 40.00 each: paid and approved while the wallet lasts. 85 %.
    Small,
    /// One item of 550.00 to 700.00: paid, then rejected by review (and refunded). 10 %.
    OverReviewLimit,
    /// One item of 1500.00: more than a fresh wallet holds. 5 %.
    OverCredit,
}

pub fn kind(rng: &mut impl Rng) -> Kind {
    match rng.random_range(0..100) {
        0..85 => Kind::Small,
        85..95 => Kind::OverReviewLimit,
        _ => Kind::OverCredit,
    }
}

/// A request body for one of `customers` customers named `{prefix}-{n}`.
pub fn random_order(rng: &mut impl Rng, prefix: &str, customers: u32) -> Value {
    let customer = format!("{prefix}-{}", rng.random_range(0..customers.max(1)));
    let restaurant = format!("r{}", rng.random_range(1..=5));
    let items: Vec<Value> = match kind(rng) {
        Kind::Small => (0..rng.random_range(1..=3))
            .map(|_| {
                let (code, name) = MENU[rng.random_range(0..MENU.len())];
                json!({
                    "code": code,
                    "name": name,
                    "unit_price": price(rng.random_range(500..=4000)),
                    "quantity": rng.random_range(1..=2),
                })
            })
            .collect(),
        Kind::OverReviewLimit => vec![json!({
            "code": "x1", "name": "Banquet",
            "unit_price": price(rng.random_range(55_000..=70_000)),
            "quantity": 1,
        })],
        Kind::OverCredit => vec![json!({
            "code": "x2", "name": "Catering", "unit_price": "1500.00", "quantity": 1,
        })],
    };
    json!({ "customer_id": customer, "restaurant_id": restaurant, "order_items": items })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_mostly_small_orders_with_some_over_each_limit() {
        let mut rng = rand::rng();
        let kinds: Vec<Kind> = (0..2000).map(|_| kind(&mut rng)).collect();
        let share = |k: Kind| kinds.iter().filter(|x| **x == k).count();
        assert!(share(Kind::Small) > 1500);
        assert!(share(Kind::OverReviewLimit) > 100);
        assert!(share(Kind::OverCredit) > 40);
    }

    #[test]
    fn an_order_is_a_valid_request_body_with_exact_prices() {
        let mut rng = rand::rng();
        for _ in 0..50 {
            let order = random_order(&mut rng, "load-ab12", 3);
            let customer = order["customer_id"].as_str().expect("customer");
            assert!(["load-ab12-0", "load-ab12-1", "load-ab12-2"].contains(&customer));
            let items = order["order_items"].as_array().expect("items");
            assert!(!items.is_empty());
            for item in items {
                let price = item["unit_price"].as_str().expect("price as text");
                let (_, cents) = price.split_once('.').expect("two decimals");
                assert_eq!(cents.len(), 2, "{price}");
            }
        }
    }
}
