//! Amounts as people type and read them: decimal major units in the currency's ISO 4217
//! exponent (`125.00 USD`, `1200 JPY`), converted to and from minor units exactly, never
//! through floating point.

use anyhow::Context as _;
use tandem_money::{Currency, Money};
use tandem_proto::tandem::r#type::v1 as types;

/// Converts `125.5` or `125.50` in `currency` to minor units, exactly; more decimals than
/// the currency's exponent is an error.
pub(crate) fn parse_amount(text: &str, currency: &str) -> anyhow::Result<Money> {
    let currency = Currency::parse(currency).map_err(|e| anyhow::anyhow!("--currency {e}"))?;
    let exponent = usize::from(currency.exponent());
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    anyhow::ensure!(
        !whole.is_empty()
            && whole.bytes().all(|b| b.is_ascii_digit())
            && fraction.bytes().all(|b| b.is_ascii_digit()),
        "amount {text:?} must be a positive decimal such as 125.00"
    );
    anyhow::ensure!(
        fraction.len() <= exponent,
        "{currency} has {exponent} decimal places; {text:?} has more"
    );
    let digits = format!("{whole}{fraction:0<exponent$}");
    let minor_units: i64 = digits
        .parse()
        .with_context(|| format!("amount {text:?} is too large"))?;
    anyhow::ensure!(minor_units > 0, "amount must be positive");
    Ok(Money::new(currency, minor_units))
}

/// An amount with its currency as people type it, `"0.01 USD"`: a positive decimal exactly in
/// the currency's minor units (`--amount` of `recon propose`, `sum_max` of a risk policy file).
pub(crate) fn parse_money(text: &str) -> anyhow::Result<types::Money> {
    let mut words = text.split_whitespace();
    let (Some(amount), Some(code), None) = (words.next(), words.next(), words.next()) else {
        anyhow::bail!("{text:?} must be an amount and its currency, such as \"0.01 USD\"");
    };
    // Checked here so that an unknown currency is not reported as a `--currency` flag.
    Currency::parse(code).map_err(|_| anyhow::anyhow!("{code:?} is not an ISO 4217 currency"))?;
    Ok(wire(parse_amount(amount, code)?))
}

/// An amount as the wire's `Money`.
pub(crate) fn wire(money: Money) -> types::Money {
    types::Money {
        currency_code: money.currency.code().to_owned(),
        minor_units: money.minor_units,
    }
}

/// An amount as a decimal with its currency (`20.50 USD`), or `-` when unset or unknown.
pub(crate) fn show(money: Option<&types::Money>) -> String {
    money
        .and_then(|m| {
            Currency::parse(&m.currency_code)
                .ok()
                .map(|c| Money::new(c, m.minor_units).to_string())
        })
        .unwrap_or_else(|| "-".to_owned())
}

/// An amount as a bare decimal in its currency's exponent (`20.50`, `-3`), for CSV beside a
/// currency column; `None` for a currency this build does not know.
pub(crate) fn decimal(money: &types::Money) -> Option<String> {
    Currency::parse(&money.currency_code)
        .ok()
        .map(|c| Money::new(c, money.minor_units).decimal().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bare decimals follow the currency's exponent, keep the sign, and refuse to guess an
    /// unknown currency's.
    #[test]
    fn decimals() {
        let decimal_of = |currency: &str, minor_units| {
            decimal(&types::Money {
                currency_code: currency.to_owned(),
                minor_units,
            })
        };
        assert_eq!(decimal_of("USD", 2050).as_deref(), Some("20.50"));
        assert_eq!(decimal_of("USD", -5).as_deref(), Some("-0.05"));
        assert_eq!(decimal_of("JPY", 1200).as_deref(), Some("1200"));
        assert_eq!(decimal_of("BHD", 1).as_deref(), Some("0.001"));
        assert_eq!(decimal_of("XXX", 1), None);
    }

    /// Decimal amounts become exact minor units per the currency's exponent; malformed or
    /// over-precise amounts are refused.
    #[test]
    fn amounts() {
        let minor =
            |text: &str, currency: &str| parse_amount(text, currency).map(|m| m.minor_units).ok();
        assert_eq!(minor("125.00", "USD"), Some(12_500));
        assert_eq!(minor("125.5", "USD"), Some(12_550));
        assert_eq!(minor("125", "USD"), Some(12_500));
        assert_eq!(minor("0.01", "USD"), Some(1));
        assert_eq!(minor("1200", "JPY"), Some(1200));
        assert_eq!(minor("1.234", "BHD"), Some(1234));
        for (text, currency) in [
            ("1.001", "USD"),
            ("1.5", "JPY"),
            ("-1", "USD"),
            ("0", "USD"),
            ("1e3", "USD"),
            ("", "USD"),
            (".5", "USD"),
            ("1", "XXX"),
            ("99999999999999999999", "USD"),
        ] {
            assert_eq!(minor(text, currency), None, "{text} {currency}");
        }
    }

    /// An amount with its currency (`"0.01 USD"`) is a positive decimal and an ISO 4217 code,
    /// exactly in the currency's minor units; anything else is refused.
    #[test]
    fn amounts_with_currencies() {
        let parse = |text: &str| {
            parse_money(text)
                .map(|m| (m.currency_code, m.minor_units))
                .ok()
        };
        assert_eq!(parse("0.01 USD"), Some(("USD".to_owned(), 1)));
        assert_eq!(parse("  12.5   EUR "), Some(("EUR".to_owned(), 1250)));
        assert_eq!(parse("1200 JPY"), Some(("JPY".to_owned(), 1200)));
        assert_eq!(parse("0.001 BHD"), Some(("BHD".to_owned(), 1)));
        for bad in [
            "0.01",
            "USD",
            "USD 0.01",
            "0.01 usd",
            "0.01 XXX",
            "0.01 USD extra",
            "-0.01 USD",
            "0 USD",
            "0.001 USD",
            "1.5 JPY",
            "1,00 USD",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        let unknown = parse_money("1 XXX").expect_err("XXX").to_string();
        assert!(unknown.contains("ISO 4217"), "{unknown}");
    }
}
