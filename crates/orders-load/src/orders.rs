//! The orders a load places: a [`Mix`] that, with the default limits (wallets of 1000.00, review up
//! to 500.00), ends mostly Approved, some Rejected (over the review limit, refunded) and some
//! PaymentFailed (over any fresh wallet, or a wallet the run has drained). `orderctl load` and the
//! chaos run (`dev/chaos`) both make their orders here, each with its own mix.

use std::ops::RangeInclusive;

use rand::Rng;
use serde::Serialize;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    /// A few items: paid and approved while the wallet lasts, PaymentFailed after.
    Small,
    /// One item over the review limit: paid, then rejected by review (and refunded), or
    /// PaymentFailed.
    OverReviewLimit,
    /// One item over what a fresh wallet holds: PaymentFailed.
    OverCredit,
}

/// Which orders a run places: how many of each [`Kind`] and at what prices (in cents).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    /// Percent of [`Kind::Small`] orders.
    pub small_percent: u32,
    /// Percent of [`Kind::OverReviewLimit`] orders; the rest are [`Kind::OverCredit`].
    pub over_review_percent: u32,
    /// A small order has 1 to 3 items of this unit price, 1 or 2 of each.
    pub small_item_cents: RangeInclusive<u64>,
    /// The one item of an order over the review limit.
    pub over_review_cents: RangeInclusive<u64>,
    /// The one item of an order over the credit.
    pub over_credit_cents: RangeInclusive<u64>,
}

impl Mix {
    /// `orderctl load`'s: 85 % small (5.00 to 40.00 an item), 10 % of 550.00 to 700.00, 5 % of
    /// 1500.00.
    pub const LOAD: Mix = Mix {
        small_percent: 85,
        over_review_percent: 10,
        small_item_cents: 500..=4_000,
        over_review_cents: 55_000..=70_000,
        over_credit_cents: 150_000..=150_000,
    };

    /// The chaos run's: 75 % small (5.00 to 60.00 an item, at most 360.00), 15 % of 500.01 to
    /// 900.00, 10 % of 1000.01 to 1500.00: every amount near a limit is exercised, and wallets
    /// shared by many orders run dry during the run.
    pub const CHAOS: Mix = Mix {
        small_percent: 75,
        over_review_percent: 15,
        small_item_cents: 500..=6_000,
        over_review_cents: 50_001..=90_000,
        over_credit_cents: 100_001..=150_000,
    };

    pub fn kind(&self, rng: &mut impl Rng) -> Kind {
        let draw = rng.random_range(0..100);
        if draw < self.small_percent {
            Kind::Small
        } else if draw < self.small_percent + self.over_review_percent {
            Kind::OverReviewLimit
        } else {
            Kind::OverCredit
        }
    }
}

/// One order: its request body and what a check needs to know of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    pub body: Value,
    pub customer_id: String,
    /// The exact sum of the items, in cents.
    pub amount_cents: u64,
    pub kind: Kind,
}

/// An order of `mix` for one of `customers` customers named `{prefix}-{n}`.
pub fn generate(rng: &mut impl Rng, mix: &Mix, prefix: &str, customers: u32) -> Generated {
    let customer_id = format!("{prefix}-{}", rng.random_range(0..customers.max(1)));
    let restaurant = format!("r{}", rng.random_range(1..=5));
    let kind = mix.kind(rng);
    // (code, name, unit price in cents, quantity)
    let lines: Vec<(&str, &str, u64, u64)> = match kind {
        Kind::Small => (0..rng.random_range(1..=3))
            .map(|_| {
                let (code, name) = MENU[rng.random_range(0..MENU.len())];
                let cents = rng.random_range(mix.small_item_cents.clone());
                (code, name, cents, rng.random_range(1..=2))
            })
            .collect(),
        Kind::OverReviewLimit => vec![(
            "x1",
            "Banquet",
            rng.random_range(mix.over_review_cents.clone()),
            1,
        )],
        Kind::OverCredit => vec![(
            "x2",
            "Catering",
            rng.random_range(mix.over_credit_cents.clone()),
            1,
        )],
    };
    let amount_cents = lines.iter().map(|(_, _, cents, qty)| cents * qty).sum();
    let items: Vec<Value> = lines
        .iter()
        .map(|(code, name, cents, quantity)| {
            json!({ "code": code, "name": name, "unit_price": price(*cents), "quantity": quantity })
        })
        .collect();
    Generated {
        body: json!({ "customer_id": customer_id, "restaurant_id": restaurant, "order_items": items }),
        customer_id,
        amount_cents,
        kind,
    }
}

/// A request body of `orderctl load`'s mix for one of `customers` customers named `{prefix}-{n}`.
pub fn random_order(rng: &mut impl Rng, prefix: &str, customers: u32) -> Value {
    generate(rng, &Mix::LOAD, prefix, customers).body
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn the_mix_is_mostly_small_orders_with_some_over_each_limit() {
        let mut rng = rand::rng();
        let kinds: Vec<Kind> = (0..2000).map(|_| Mix::LOAD.kind(&mut rng)).collect();
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

    #[test]
    fn the_amount_is_the_sum_of_the_lines_and_each_kind_stays_in_its_range() {
        for mix in [Mix::LOAD, Mix::CHAOS] {
            let mut rng = StdRng::seed_from_u64(1);
            for _ in 0..500 {
                let order = generate(&mut rng, &mix, "c", 50);
                let sum: u64 = order.body["order_items"]
                    .as_array()
                    .expect("items")
                    .iter()
                    .map(|item| {
                        let price = item["unit_price"].as_str().expect("a price");
                        let (units, cents) = price.split_once('.').expect("two decimals");
                        let cents = units.parse::<u64>().expect("units") * 100
                            + cents.parse::<u64>().expect("cents");
                        cents * item["quantity"].as_u64().expect("a quantity")
                    })
                    .sum();
                assert_eq!(sum, order.amount_cents, "{}", order.body);
                let range = match order.kind {
                    Kind::Small => {
                        let item = &mix.small_item_cents;
                        *item.start()..=item.end() * 6
                    }
                    Kind::OverReviewLimit => mix.over_review_cents.clone(),
                    Kind::OverCredit => mix.over_credit_cents.clone(),
                };
                assert!(range.contains(&order.amount_cents), "{order:?}");
                assert_eq!(order.body["customer_id"], order.customer_id.as_str());
            }
        }
    }

    #[test]
    fn the_same_seed_makes_the_same_orders() {
        let (mut a, mut b) = (StdRng::seed_from_u64(7), StdRng::seed_from_u64(7));
        for _ in 0..50 {
            assert_eq!(
                generate(&mut a, &Mix::CHAOS, "chaos", 50),
                generate(&mut b, &Mix::CHAOS, "chaos", 50)
            );
        }
    }
}
