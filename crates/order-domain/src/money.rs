//! Exact money: a non-negative decimal with at most two decimal places.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Largest amount in cents. Keeping it far below `i64::MAX` makes `to_cents` infallible and
/// keeps every sum of an order (at most 100 × 1000 × 1,000,000.00) well inside the range.
const MAX_CENTS: i64 = 99_999_999_999_999_999;

/// A JSON number (an `f64` once serde_json has read it) names exactly one two-decimal value only
/// while it has at most 15 significant digits, the precision an `f64` round-trips.
const MAX_EXACT_FLOAT: f64 = 1e13;

/// An exact, non-negative amount of money with two decimal places.
///
/// The value is always stored at scale 2, so `Display` and the JSON form are `"25.00"`.
/// Reads a JSON number or string (`12.5`, `"12.5"`, `"12.50"`), refusing anything that would
/// need rounding; writes a JSON string so that no client ever reads a float.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(Decimal);

/// Why a value is not [`Money`]. The messages complete a sentence that starts with a field name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("must be a decimal number such as 12.50")]
    NotADecimal,
    #[error("must not be negative")]
    Negative,
    #[error("must have at most 2 decimal places")]
    TooPrecise,
    #[error("must be at most 999999999999999.99")]
    TooLarge,
    #[error("is too large to be exact as a JSON number; send it as a string")]
    InexactNumber,
}

impl Money {
    pub const ZERO: Money = Money(Decimal::from_parts(0, 0, 0, false, 2));
    pub const MAX: Money = Money::cents_unchecked(MAX_CENTS);

    /// Only for `0 <= cents <= MAX_CENTS`, which fits in the low 64 bits.
    const fn cents_unchecked(cents: i64) -> Money {
        Money(Decimal::from_parts(
            (cents & 0xFFFF_FFFF) as u32,
            (cents >> 32) as u32,
            0,
            false,
            2,
        ))
    }

    /// Money from a whole number of units (`from_whole_units(25)` is 25.00); `None` when
    /// negative or above [`Money::MAX`]. Usable in constants.
    pub const fn from_whole_units(units: i64) -> Option<Money> {
        if units < 0 || units > MAX_CENTS / 100 {
            None
        } else {
            Some(Money::cents_unchecked(units * 100))
        }
    }

    /// Money from an amount in minor units (cents).
    pub fn from_cents(cents: i64) -> Result<Money, MoneyError> {
        if cents < 0 {
            Err(MoneyError::Negative)
        } else if cents > MAX_CENTS {
            Err(MoneyError::TooLarge)
        } else {
            Ok(Money::cents_unchecked(cents))
        }
    }

    /// Money from a decimal, refused when it would need rounding.
    pub fn from_decimal(value: Decimal) -> Result<Money, MoneyError> {
        if value.is_sign_negative() && !value.is_zero() {
            return Err(MoneyError::Negative);
        }
        let normalized = value.normalize();
        if normalized.scale() > 2 {
            return Err(MoneyError::TooPrecise);
        }
        // normalized = mantissa × 10^-scale with scale ≤ 2, so cents = mantissa × 10^(2-scale).
        let cents = normalized
            .mantissa()
            .unsigned_abs()
            .checked_mul(10u128.pow(2 - normalized.scale()))
            .and_then(|c| i64::try_from(c).ok())
            .ok_or(MoneyError::TooLarge)?;
        Money::from_cents(cents)
    }

    /// Money from a JSON number as serde_json holds it (`u64`, `i64` or `f64`).
    pub fn from_json_number(number: &serde_json::Number) -> Result<Money, MoneyError> {
        if let Some(n) = number.as_u64() {
            Money::from_u64(n)
        } else if let Some(n) = number.as_i64() {
            Money::from_i64(n)
        } else if let Some(n) = number.as_f64() {
            Money::from_f64(n)
        } else {
            Err(MoneyError::NotADecimal)
        }
    }

    /// Money from a JSON number or a JSON string.
    pub fn from_json(value: &serde_json::Value) -> Result<Money, MoneyError> {
        match value {
            serde_json::Value::Number(n) => Money::from_json_number(n),
            serde_json::Value::String(s) => s.parse(),
            _ => Err(MoneyError::NotADecimal),
        }
    }

    fn from_u64(n: u64) -> Result<Money, MoneyError> {
        let cents = i64::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(100))
            .ok_or(MoneyError::TooLarge)?;
        Money::from_cents(cents)
    }

    fn from_i64(n: i64) -> Result<Money, MoneyError> {
        if n < 0 {
            return Err(MoneyError::Negative);
        }
        Money::from_u64(n.unsigned_abs())
    }

    /// serde_json (without `arbitrary_precision`) hands JSON numbers with a fraction over as
    /// `f64`. Its shortest round-trip text (what serde_json itself would print) is the number the
    /// client wrote whenever that had at most 15 significant digits, so it is parsed exactly.
    fn from_f64(n: f64) -> Result<Money, MoneyError> {
        if n.is_sign_negative() && n != 0.0 {
            return Err(MoneyError::Negative);
        }
        if n >= MAX_EXACT_FLOAT {
            return Err(MoneyError::InexactNumber);
        }
        let text = serde_json::Number::from_f64(n)
            .ok_or(MoneyError::NotADecimal)?
            .to_string();
        let value = if text.contains(['e', 'E']) {
            Decimal::from_scientific(&text)
        } else {
            Decimal::from_str_exact(&text)
        };
        // An exponent that Decimal cannot hold is either far too small (many decimals) or
        // far too large; the range check above already took the large ones.
        Money::from_decimal(value.map_err(|_| MoneyError::TooPrecise)?)
    }

    /// The amount as a decimal with scale 2 (for `DECIMAL` columns).
    pub fn as_decimal(&self) -> Decimal {
        self.0
    }

    /// The amount in minor units (for integer columns).
    pub fn to_cents(&self) -> i64 {
        // Always at scale 2 and at most MAX_CENTS, so the mantissa is the cent count.
        i64::try_from(self.0.mantissa()).unwrap_or(MAX_CENTS)
    }

    /// `self + other`, or `None` above [`Money::MAX`].
    pub fn checked_add(self, other: Money) -> Option<Money> {
        Money::from_cents(self.to_cents().checked_add(other.to_cents())?).ok()
    }

    /// `self - other`, or `None` when that would be negative.
    pub fn checked_sub(self, other: Money) -> Option<Money> {
        Money::from_cents(self.to_cents().checked_sub(other.to_cents())?).ok()
    }

    /// `self × quantity`, or `None` above [`Money::MAX`].
    pub fn checked_mul(self, quantity: u32) -> Option<Money> {
        Money::from_cents(self.to_cents().checked_mul(i64::from(quantity))?).ok()
    }

    pub fn is_zero(&self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for Money {
    type Err = MoneyError;

    /// Strict decimal text: optional `-`, digits, optionally `.` and digits. No exponent, no
    /// `+`, no spaces, no underscores (which `Decimal` itself would accept).
    fn from_str(s: &str) -> Result<Money, MoneyError> {
        let unsigned = s.strip_prefix('-').unwrap_or(s);
        let (int, frac) = match unsigned.split_once('.') {
            Some((int, frac)) => (int, Some(frac)),
            None => (unsigned, None),
        };
        let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        if !digits(int) || !frac.is_none_or(digits) {
            return Err(MoneyError::NotADecimal);
        }
        let value = Decimal::from_str_exact(s).map_err(|_| {
            // The grammar is valid, so Decimal gave up on the size: too many digits in total.
            if int.trim_start_matches('0').len() > 15 {
                MoneyError::TooLarge
            } else {
                MoneyError::TooPrecise
            }
        })?;
        Money::from_decimal(value)
    }
}

impl TryFrom<Decimal> for Money {
    type Error = MoneyError;

    fn try_from(value: Decimal) -> Result<Money, MoneyError> {
        Money::from_decimal(value)
    }
}

impl From<Money> for Decimal {
    fn from(money: Money) -> Decimal {
        money.0
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Scale is always 2, so this prints exactly two decimals.
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Money({})", self.0)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        deserializer.deserialize_any(MoneyVisitor)
    }
}

struct MoneyVisitor;

impl Visitor<'_> for MoneyVisitor {
    type Value = Money;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an amount of money as a number or string with at most 2 decimals")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Money, E> {
        Money::from_u64(v).map_err(invalid)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Money, E> {
        Money::from_i64(v).map_err(invalid)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Money, E> {
        Money::from_f64(v).map_err(invalid)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Money, E> {
        v.parse().map_err(invalid)
    }
}

fn invalid<E: de::Error>(error: MoneyError) -> E {
    E::custom(format_args!("invalid amount of money: it {error}"))
}
