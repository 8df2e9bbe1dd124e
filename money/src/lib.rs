//! Money for Tandem: ISO 4217 currencies with their minor-unit exponents, and amounts as
//! integer minor units. Floating point never represents money.
//!
//! Every service checks a wire `Money` once, at its edge, into [`Money`]: a known currency and
//! an `i64` count of its minor units (cents for USD, yen for JPY, fils for BHD).
//!
//! # Invariants
//!
//! - A [`Currency`] is always one of the active ISO 4217 codes in [`CURRENCIES`].
//! - Arithmetic never overflows silently: sums and differences are checked.

use std::fmt;

pub mod fx;

/// Active ISO 4217 currencies and their minor-unit exponents, sorted by code (ISO 4217 list
/// one; fund codes, precious metals and test codes excluded).
pub const CURRENCIES: &[(&str, u8)] = &[
    ("AED", 2),
    ("AFN", 2),
    ("ALL", 2),
    ("AMD", 2),
    ("AOA", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("AWG", 2),
    ("AZN", 2),
    ("BAM", 2),
    ("BBD", 2),
    ("BDT", 2),
    ("BGN", 2),
    ("BHD", 3),
    ("BIF", 0),
    ("BMD", 2),
    ("BND", 2),
    ("BOB", 2),
    ("BRL", 2),
    ("BSD", 2),
    ("BTN", 2),
    ("BWP", 2),
    ("BYN", 2),
    ("BZD", 2),
    ("CAD", 2),
    ("CDF", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CRC", 2),
    ("CUP", 2),
    ("CVE", 2),
    ("CZK", 2),
    ("DJF", 0),
    ("DKK", 2),
    ("DOP", 2),
    ("DZD", 2),
    ("EGP", 2),
    ("ERN", 2),
    ("ETB", 2),
    ("EUR", 2),
    ("FJD", 2),
    ("FKP", 2),
    ("GBP", 2),
    ("GEL", 2),
    ("GHS", 2),
    ("GIP", 2),
    ("GMD", 2),
    ("GNF", 0),
    ("GTQ", 2),
    ("GYD", 2),
    ("HKD", 2),
    ("HNL", 2),
    ("HTG", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("IQD", 3),
    ("IRR", 2),
    ("ISK", 0),
    ("JMD", 2),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KGS", 2),
    ("KHR", 2),
    ("KMF", 0),
    ("KPW", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("KYD", 2),
    ("KZT", 2),
    ("LAK", 2),
    ("LBP", 2),
    ("LKR", 2),
    ("LRD", 2),
    ("LSL", 2),
    ("LYD", 3),
    ("MAD", 2),
    ("MDL", 2),
    ("MGA", 2),
    ("MKD", 2),
    ("MMK", 2),
    ("MNT", 2),
    ("MOP", 2),
    ("MRU", 2),
    ("MUR", 2),
    ("MVR", 2),
    ("MWK", 2),
    ("MXN", 2),
    ("MYR", 2),
    ("MZN", 2),
    ("NAD", 2),
    ("NGN", 2),
    ("NIO", 2),
    ("NOK", 2),
    ("NPR", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PAB", 2),
    ("PEN", 2),
    ("PGK", 2),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("PYG", 0),
    ("QAR", 2),
    ("RON", 2),
    ("RSD", 2),
    ("RUB", 2),
    ("RWF", 0),
    ("SAR", 2),
    ("SBD", 2),
    ("SCR", 2),
    ("SDG", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("SHP", 2),
    ("SLE", 2),
    ("SOS", 2),
    ("SRD", 2),
    ("SSP", 2),
    ("STN", 2),
    ("SVC", 2),
    ("SYP", 2),
    ("SZL", 2),
    ("THB", 2),
    ("TJS", 2),
    ("TMT", 2),
    ("TND", 3),
    ("TOP", 2),
    ("TRY", 2),
    ("TTD", 2),
    ("TWD", 2),
    ("TZS", 2),
    ("UAH", 2),
    ("UGX", 0),
    ("USD", 2),
    ("UYU", 2),
    ("UYW", 4),
    ("UZS", 2),
    ("VES", 2),
    ("VND", 0),
    ("VUV", 0),
    ("WST", 2),
    ("XAF", 0),
    ("XCD", 2),
    ("XOF", 0),
    ("XPF", 0),
    ("YER", 2),
    ("ZAR", 2),
    ("ZMW", 2),
    ("ZWG", 2),
];

/// Why a currency code or an amount is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    /// Not an active ISO 4217 code in upper case.
    #[error("must be an active ISO 4217 currency code in upper case, for example USD")]
    UnknownCurrency,
    /// Two amounts in different currencies were combined.
    #[error("amounts are in different currencies")]
    CurrencyMismatch,
    /// A sum or difference left the range of `i64`.
    #[error("amount out of range")]
    Overflow,
}

/// An active ISO 4217 currency.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    /// Index into [`CURRENCIES`].
    index: u8,
}

impl Currency {
    /// Looks up an upper-case ISO 4217 code.
    pub fn parse(code: &str) -> Result<Currency, MoneyError> {
        CURRENCIES
            .binary_search_by(|(known, _)| known.cmp(&code))
            .map(|index| Currency {
                // CURRENCIES has fewer than 256 entries (checked by a test).
                index: index as u8,
            })
            .map_err(|_| MoneyError::UnknownCurrency)
    }

    /// The three-letter code.
    pub fn code(self) -> &'static str {
        CURRENCIES[usize::from(self.index)].0
    }

    /// The number of decimal places of the minor unit (2 for USD, 0 for JPY, 3 for BHD).
    pub fn exponent(self) -> u8 {
        CURRENCIES[usize::from(self.index)].1
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// An amount: a signed count of minor units of one currency.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    /// The currency.
    pub currency: Currency,
    /// The amount in minor units of `currency`.
    pub minor_units: i64,
}

impl Money {
    /// `minor_units` of `currency`.
    pub fn new(currency: Currency, minor_units: i64) -> Money {
        Money {
            currency,
            minor_units,
        }
    }

    /// Zero in `currency`.
    pub fn zero(currency: Currency) -> Money {
        Money::new(currency, 0)
    }

    /// `self + other`, in the same currency.
    pub fn checked_add(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let sum = self
            .minor_units
            .checked_add(other.minor_units)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(self.currency, sum))
    }

    /// `self - other`, in the same currency.
    pub fn checked_sub(self, other: Money) -> Result<Money, MoneyError> {
        self.same_currency(other)?;
        let difference = self
            .minor_units
            .checked_sub(other.minor_units)
            .ok_or(MoneyError::Overflow)?;
        Ok(Money::new(self.currency, difference))
    }

    fn same_currency(self, other: Money) -> Result<(), MoneyError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(MoneyError::CurrencyMismatch)
        }
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Money {
    /// The amount in major units with the currency's exponent and without the code, e.g.
    /// `20.50`, `-3`: for tables and summaries that name the currency once.
    pub fn decimal(self) -> Decimal {
        Decimal(self)
    }
}

/// [`Money::decimal`]'s display.
#[derive(Debug, Clone, Copy)]
pub struct Decimal(Money);

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let money = self.0;
        let exponent = u32::from(money.currency.exponent());
        let sign = if money.minor_units < 0 { "-" } else { "" };
        let magnitude = money.minor_units.unsigned_abs();
        if exponent == 0 {
            return write!(f, "{sign}{magnitude}");
        }
        let scale = 10u64.pow(exponent);
        write!(
            f,
            "{sign}{}.{:0width$}",
            magnitude / scale,
            magnitude % scale,
            width = exponent as usize
        )
    }
}

impl fmt::Display for Money {
    /// The amount in major units with the currency's exponent, e.g. `20.50 USD`, `-3 JPY`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.decimal(), self.currency)
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code())
    }
}

#[cfg(feature = "serde")]
impl<'de> serde::Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Currency::parse(&code).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table is sorted and unique (binary search depends on it), fits the `u8` index,
    /// and every code is three upper-case letters with an exponent of at most 4.
    #[test]
    fn table_is_well_formed() {
        assert!(CURRENCIES.len() < 256);
        for pair in CURRENCIES.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{:?} before {:?}", pair[0], pair[1]);
        }
        for (code, exponent) in CURRENCIES {
            assert!(code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()));
            assert!(*exponent <= 4, "{code}");
            assert_eq!(Currency::parse(code).map(Currency::code), Ok(*code));
        }
    }

    /// Known exponents, and codes that are not active ISO 4217 currencies.
    #[test]
    fn parse() {
        for (code, exponent) in [("USD", 2), ("EUR", 2), ("JPY", 0), ("BHD", 3), ("KWD", 3)] {
            assert_eq!(
                Currency::parse(code).unwrap().exponent(),
                exponent,
                "{code}"
            );
        }
        for code in ["", "usd", "US", "USDD", "XXX", "XAU", "ZZZ", "AAA"] {
            assert_eq!(
                Currency::parse(code),
                Err(MoneyError::UnknownCurrency),
                "{code}"
            );
        }
    }

    /// Display uses the exponent; arithmetic refuses mixed currencies and overflow.
    #[test]
    fn display_and_arithmetic() {
        let usd = Currency::parse("USD").unwrap();
        let jpy = Currency::parse("JPY").unwrap();
        let bhd = Currency::parse("BHD").unwrap();
        assert_eq!(Money::new(usd, 2050).to_string(), "20.50 USD");
        assert_eq!(Money::new(usd, -5).to_string(), "-0.05 USD");
        assert_eq!(Money::new(jpy, 1200).to_string(), "1200 JPY");
        assert_eq!(Money::new(bhd, 1).to_string(), "0.001 BHD");
        assert_eq!(
            Money::new(usd, 1).checked_add(Money::new(usd, 2)),
            Ok(Money::new(usd, 3))
        );
        assert_eq!(
            Money::new(usd, 1).checked_add(Money::new(jpy, 2)),
            Err(MoneyError::CurrencyMismatch)
        );
        assert_eq!(
            Money::new(usd, i64::MAX).checked_add(Money::new(usd, 1)),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            Money::new(usd, i64::MIN).checked_sub(Money::new(usd, 1)),
            Err(MoneyError::Overflow)
        );
    }
}
