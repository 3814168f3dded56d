//! Money is exact: what it reads, what it refuses, how it is written.

use rust_decimal::Decimal;
use serde_json::json;

use crate::{Money, MoneyError};

fn from_json(text: &str) -> Result<Money, String> {
    serde_json::from_str::<Money>(text).map_err(|e| e.to_string())
}

fn decimal(s: &str) -> Decimal {
    s.parse().expect("a decimal")
}

#[test]
fn reads_json_numbers() {
    assert_eq!(
        from_json("12.5"),
        Ok(Money::from_cents(1250).expect("money"))
    );
    assert_eq!(from_json("12"), Ok(Money::from_cents(1200).expect("money")));
    assert_eq!(from_json("0"), Ok(Money::ZERO));
    assert_eq!(
        from_json("12.50"),
        Ok(Money::from_cents(1250).expect("money"))
    );
    assert_eq!(
        from_json("1e3"),
        Ok(Money::from_cents(100_000).expect("money"))
    );
    assert_eq!(from_json("2.0"), Ok(Money::from_cents(200).expect("money")));
}

#[test]
fn reads_json_strings() {
    assert_eq!(
        from_json(r#""12.5""#),
        Ok(Money::from_cents(1250).expect("money"))
    );
    assert_eq!(
        from_json(r#""12.50""#),
        Ok(Money::from_cents(1250).expect("money"))
    );
    assert_eq!(
        from_json(r#""12""#),
        Ok(Money::from_cents(1200).expect("money"))
    );
}

#[test]
fn a_float_looking_number_is_read_exactly() {
    let price = from_json("19.99").expect("money");
    assert_eq!(price.as_decimal(), decimal("19.99"));
    assert_eq!(price.to_cents(), 1999);
    assert_eq!(
        from_json("0.1").expect("money").as_decimal(),
        decimal("0.1")
    );
    assert_eq!(
        from_json("9999999999999.99").expect("money").to_cents(),
        999_999_999_999_999
    );
}

#[test]
fn three_tenths_are_exactly_thirty_cents() {
    let tenth = from_json("0.1").expect("money");
    assert_eq!(
        tenth.checked_mul(3),
        Some(from_json(r#""0.30""#).expect("money"))
    );
    let sum = tenth
        .checked_add(tenth)
        .and_then(|s| s.checked_add(tenth))
        .expect("in range");
    assert_eq!(sum.to_string(), "0.30");
}

#[test]
fn more_than_two_decimals_are_refused() {
    for text in [
        "12.345",
        r#""12.345""#,
        "0.001",
        r#""0.001""#,
        "1e-3",
        "1.5e-7",
    ] {
        let error = from_json(text).expect_err(text);
        assert!(
            error.contains("at most 2 decimal places"),
            "{text}: {error}"
        );
    }
    assert_eq!("12.345".parse::<Money>(), Err(MoneyError::TooPrecise));
}

#[test]
fn trailing_zeros_do_not_count_as_decimals() {
    assert_eq!(
        "12.500".parse::<Money>(),
        Ok(Money::from_cents(1250).expect("money"))
    );
}

#[test]
fn negative_amounts_are_refused() {
    for text in ["-1", "-0.5", r#""-1.00""#] {
        let error = from_json(text).expect_err(text);
        assert!(error.contains("must not be negative"), "{text}: {error}");
    }
    assert_eq!(Money::from_cents(-1), Err(MoneyError::Negative));
    assert_eq!(
        Money::from_decimal(decimal("-0.01")),
        Err(MoneyError::Negative)
    );
}

#[test]
fn text_that_is_not_a_plain_decimal_is_refused() {
    for text in [
        "", " 1", "1 ", "+1", "1e3", "1_000", ".5", "5.", "NaN", "inf", "12,50", "0x10", "--1",
    ] {
        assert_eq!(
            text.parse::<Money>(),
            Err(MoneyError::NotADecimal),
            "{text:?}"
        );
    }
    for json in ["true", "null", "[]", "{}"] {
        assert!(from_json(json).is_err(), "{json}");
    }
    assert_eq!(Money::from_json(&json!(null)), Err(MoneyError::NotADecimal));
}

#[test]
fn amounts_beyond_the_maximum_are_refused() {
    assert_eq!(
        "1000000000000000".parse::<Money>(),
        Err(MoneyError::TooLarge)
    );
    assert_eq!(
        "99999999999999999999999999999999".parse::<Money>(),
        Err(MoneyError::TooLarge)
    );
    assert_eq!("999999999999999.99".parse::<Money>(), Ok(Money::MAX));
    assert_eq!(
        Money::MAX.checked_add(Money::from_cents(1).expect("money")),
        None
    );
    assert_eq!(
        from_json("18446744073709551615").map_err(|e| e.contains("at most")),
        Err(true)
    );
    assert!(from_json("1e300").is_err());
}

#[test]
fn a_json_number_too_large_to_be_exact_is_refused() {
    assert_eq!(
        Money::from_json(&json!(12_345_678_901_234.5)),
        Err(MoneyError::InexactNumber)
    );
    // The same amount as a string is exact.
    assert_eq!(
        Money::from_json(&json!("12345678901234.5")).map(|m| m.to_cents()),
        Ok(1_234_567_890_123_450)
    );
    // Whole numbers arrive as integers, exactly.
    assert_eq!(
        Money::from_json(&json!(123_456_789_012_345_u64)).map(|m| m.to_cents()),
        Ok(12_345_678_901_234_500)
    );
}

#[test]
fn is_written_as_a_string_with_two_decimals() {
    assert_eq!(
        serde_json::to_string(&Money::from_cents(2500).expect("money")).expect("json"),
        r#""25.00""#
    );
    assert_eq!(
        serde_json::to_value(Money::ZERO).expect("json"),
        json!("0.00")
    );
    assert_eq!(from_json("12.5").expect("money").to_string(), "12.50");
    assert_eq!(Money::MAX.to_string(), "999999999999999.99");
    assert_eq!(
        format!("{:?}", Money::from_cents(5).expect("money")),
        "Money(0.05)"
    );
}

#[test]
fn converts_to_and_from_decimals_and_cents() {
    let money = Money::from_decimal(decimal("19.9")).expect("money");
    assert_eq!(money.to_cents(), 1990);
    assert_eq!(money.as_decimal().scale(), 2);
    assert_eq!(Decimal::from(money), decimal("19.90"));
    assert_eq!(
        Money::try_from(decimal("1.234")),
        Err(MoneyError::TooPrecise)
    );
    assert_eq!(Money::from_whole_units(25), Money::from_cents(2500).ok());
    assert_eq!(Money::from_whole_units(-1), None);
}

#[test]
fn subtraction_never_goes_negative() {
    let ten = Money::from_whole_units(10).expect("money");
    let three = Money::from_whole_units(3).expect("money");
    assert_eq!(ten.checked_sub(three), Money::from_whole_units(7));
    assert_eq!(three.checked_sub(ten), None);
}
