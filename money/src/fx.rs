//! Exchange rates and the one conversion rule.
//!
//! A [`Rate`] is a positive decimal (`rust_decimal`): units of the *to* currency per one unit of
//! the *from* currency, in major units (`0.9238` EUR per USD). Amounts stay integer minor
//! units; only the product of an amount and a rate is ever fractional, and [`Rate::convert`]
//! says once how it is rounded:
//!
//! - the card is charged the exact conversion **rounded up** to its currency's minor unit, so
//!   that what a card pays always covers, at the rate, the part of the invoice it is said to
//!   cover (the invoice is covered exactly in its own currency);
//! - the *rounding* is the charge minus the exact conversion rounded down: 0 when the
//!   conversion is exact, 1 minor unit otherwise. The ledger books it to an FX rounding
//!   account, so the FX clearing account holds the exact conversion rounded down.
//!
//! [`Rate::covered_by`] is the inverse: the most of the *from* currency a charge covers, which
//! is what a partially approved converted leg still covers.
//!
//! All arithmetic is on integers (`u128`), checked: a product that does not fit is `None`,
//! never a wrapped amount.

use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;

use crate::Currency;

/// Most significant digits in a rate.
pub const RATE_DIGITS_MAX: u32 = 18;

/// A conversion rate, positive, at most [`RATE_DIGITS_MAX`] significant digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rate(Decimal);

/// Why a rate is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RateError {
    /// Not a plain decimal number (`0.9238`).
    #[error("must be a decimal number such as 0.9238")]
    Syntax,
    /// Zero or negative.
    #[error("must be positive")]
    NotPositive,
    /// More than [`RATE_DIGITS_MAX`] significant digits.
    #[error("must have at most 18 significant digits")]
    TooPrecise,
}

/// A conversion of an amount: what the card is charged and how it was rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conversion {
    /// The exact conversion rounded up, in minor units of the *to* currency.
    pub charge: i64,
    /// `charge` minus the exact conversion rounded down: 0 or 1.
    pub rounding: i64,
}

impl Rate {
    /// Checks `decimal` as a rate.
    pub fn new(decimal: Decimal) -> Result<Rate, RateError> {
        if decimal <= Decimal::ZERO {
            return Err(RateError::NotPositive);
        }
        let decimal = decimal.normalize();
        if digits(decimal.mantissa().unsigned_abs()) > RATE_DIGITS_MAX {
            return Err(RateError::TooPrecise);
        }
        Ok(Rate(decimal))
    }

    /// The decimal.
    pub fn decimal(self) -> Decimal {
        self.0
    }

    /// `1 / self`, rounded to [`RATE_DIGITS_MAX`] significant digits; `None` if it does not
    /// fit. For showing the inverse of a pair, never for booking.
    pub fn inverse(self) -> Option<Rate> {
        let inverse = Decimal::ONE.checked_div(self.0)?;
        let whole = digits(inverse.trunc().mantissa().unsigned_abs());
        let places = RATE_DIGITS_MAX.saturating_sub(whole.max(1));
        Rate::new(inverse.round_dp(places)).ok()
    }

    /// The numerator and denominator of `amount`'s conversion from `from` to `to` minor
    /// units: `amount * mantissa * 10^e_to / 10^(scale + e_from)`, reduced by their common
    /// power of ten.
    fn factors(self, from: Currency, to: Currency) -> (u128, u128) {
        let up = u32::from(to.exponent());
        let down = self.0.scale() + u32::from(from.exponent());
        let common = up.min(down);
        (10u128.pow(up - common), 10u128.pow(down - common))
    }

    /// Converts `amount` minor units of `from` into `to` by the rule above; `None` for a
    /// negative amount or one too large to convert.
    pub fn convert(self, amount: i64, from: Currency, to: Currency) -> Option<Conversion> {
        let amount = u128::try_from(amount).ok()?;
        let (up, down) = self.factors(from, to);
        let numerator = amount
            .checked_mul(self.0.mantissa().unsigned_abs())?
            .checked_mul(up)?;
        let floor = numerator / down;
        let charge = floor + u128::from(numerator % down != 0);
        Some(Conversion {
            charge: i64::try_from(charge).ok()?,
            rounding: i64::try_from(charge - floor).ok()?,
        })
    }

    /// The most minor units of `from` that a charge of `charge` minor units of `to` covers at
    /// this rate: the largest `a` whose conversion is at most `charge`. `None` for a negative
    /// charge or one too large.
    pub fn covered_by(self, charge: i64, from: Currency, to: Currency) -> Option<i64> {
        let charge = u128::try_from(charge).ok()?;
        let (up, down) = self.factors(from, to);
        let per_unit = self.0.mantissa().unsigned_abs().checked_mul(up)?;
        i64::try_from(charge.checked_mul(down)? / per_unit).ok()
    }
}

/// Decimal digits of `n` (1 for 0).
fn digits(n: u128) -> u32 {
    n.checked_ilog10().map_or(1, |log| log + 1)
}

impl FromStr for Rate {
    type Err = RateError;

    /// Parses a plain decimal (`0.9238`, `149.5`, `1`): no sign, exponent or spaces.
    fn from_str(text: &str) -> Result<Rate, RateError> {
        let plain = !text.is_empty()
            && text.len() <= 40
            && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
            && text.bytes().filter(|b| *b == b'.').count() <= 1
            && !text.starts_with('.')
            && !text.ends_with('.');
        if !plain {
            return Err(RateError::Syntax);
        }
        let decimal = Decimal::from_str_exact(text).map_err(|_| RateError::TooPrecise)?;
        Rate::new(decimal)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Rate, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    fn rate(text: &str) -> Rate {
        text.parse().unwrap()
    }

    #[test]
    fn parsing_refuses_what_is_not_a_plain_positive_decimal() {
        assert_eq!(rate("0.9238").to_string(), "0.9238");
        assert_eq!(rate("149.50").to_string(), "149.5");
        for bad in [
            "", "-1", "+1", "1e3", ".5", "5.", "1.2.3", " 1", "0x10", "NaN",
        ] {
            assert_eq!(bad.parse::<Rate>(), Err(RateError::Syntax), "{bad:?}");
        }
        assert_eq!("0".parse::<Rate>(), Err(RateError::NotPositive));
        assert_eq!("0.000".parse::<Rate>(), Err(RateError::NotPositive));
        assert_eq!(
            "1.0000000000000000001".parse::<Rate>(),
            Err(RateError::TooPrecise)
        );
        assert!("1.00000000000000001".parse::<Rate>().is_ok());
    }

    /// The documented example: 13.00 USD at 0.9238 is 12.0094 EUR, charged 12.01.
    #[test]
    fn conversion_rounds_the_charge_up_and_reports_the_rounding() {
        let usd_eur = rate("0.9238");
        assert_eq!(
            usd_eur.convert(1300, c("USD"), c("EUR")),
            Some(Conversion {
                charge: 1201,
                rounding: 1
            })
        );
        assert_eq!(
            usd_eur.convert(10_000, c("USD"), c("EUR")),
            Some(Conversion {
                charge: 9238,
                rounding: 0
            })
        );
        // Exponents 2 -> 0 and 2 -> 3.
        assert_eq!(
            rate("149.37").convert(1234, c("USD"), c("JPY")).unwrap(),
            Conversion {
                charge: 1844,
                rounding: 1
            }
        );
        assert_eq!(
            rate("0.3761").convert(100, c("USD"), c("BHD")).unwrap(),
            Conversion {
                charge: 377,
                rounding: 1
            }
        );
        assert_eq!(usd_eur.convert(-1, c("USD"), c("EUR")), None);
        assert_eq!(
            rate("999999999999").convert(i64::MAX, c("JPY"), c("BHD")),
            None
        );
    }

    #[test]
    fn covered_by_is_the_largest_amount_a_charge_pays_for() {
        let usd_eur = rate("0.9238");
        // 12.01 EUR covers 13.00 USD (13.01 would need 12.0186).
        assert_eq!(usd_eur.covered_by(1201, c("USD"), c("EUR")), Some(1300));
        assert_eq!(usd_eur.covered_by(1200, c("USD"), c("EUR")), Some(1298));
        assert_eq!(
            rate("149.37").covered_by(1844, c("USD"), c("JPY")),
            Some(1234)
        );
        for amount in [0, 1, 7, 99, 1300, 123_457] {
            let charge = usd_eur.convert(amount, c("USD"), c("EUR")).unwrap().charge;
            assert!(usd_eur.covered_by(charge, c("USD"), c("EUR")).unwrap() >= amount);
        }
    }

    #[test]
    fn inverse_is_for_display() {
        assert_eq!(rate("0.8").inverse().unwrap().to_string(), "1.25");
        assert_eq!(
            rate("3").inverse().unwrap().to_string(),
            "0.33333333333333333"
        );
    }
}
