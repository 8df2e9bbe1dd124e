//! Exchange rates as payments use them (DESIGN section 10).
//!
//! A [`Quote`] is a rate from the rate source with its source and as-of time. A payment fixes
//! every quote it may need when it is created (planning), keeps them in its record, and uses
//! only those, so a rate changed while the payment is in flight, or a crash and recovery, never
//! changes its legs. The conversion rule itself is [`tandem_money::fx`].

use serde::{Deserialize, Serialize};
use tandem_money::Currency;
use tandem_money::fx::{Conversion, Rate};
use time::OffsetDateTime;

/// A rate as a payment fixed it: units of `to` per unit of `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// The currency converted from (the invoice's).
    pub from: Currency,
    /// The currency converted to (the card's).
    pub to: Currency,
    /// The rate.
    pub rate: Rate,
    /// Where the rate came from (`treasury`, `file:rates.toml`, ...).
    pub source: String,
    /// When the source set it.
    pub as_of: OffsetDateTime,
}

impl Quote {
    /// Converts `amount` minor units of `from` into `to` (rounded up, see
    /// [`tandem_money::fx`]); `None` if too large.
    pub fn convert(&self, amount: i64) -> Option<Conversion> {
        self.rate.convert(amount, self.from, self.to)
    }

    /// The most minor units of `from` a charge of `charge` minor units of `to` covers.
    pub fn covered_by(&self, charge: i64) -> Option<i64> {
        self.rate.covered_by(charge, self.from, self.to)
    }
}

/// Why a payment cannot have the rate it needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateProblem {
    /// The source has no rate for the pair (`FX_RATE_MISSING`).
    #[error("no rate from {from} to {to}")]
    Missing {
        /// From.
        from: Currency,
        /// To.
        to: Currency,
    },
    /// The pair's rate is older than `fx.rate_age_s_max` (`FX_RATE_STALE`).
    #[error("the rate from {from} to {to} is older than allowed")]
    Stale {
        /// From.
        from: Currency,
        /// To.
        to: Currency,
        /// Its as-of time.
        as_of: OffsetDateTime,
    },
}

/// The rates a payment may convert at, and the pairs it may not.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Picked {
    /// The fresh quotes.
    pub quotes: Vec<Quote>,
    /// The pairs without a fresh rate, in the order asked.
    pub problems: Vec<RateProblem>,
}

/// Picks the quotes for converting `from` into each of `to` (other than `from`) from `known`
/// (the rate source's rates), as of `now`: a pair's rate is fresh when it is at most `age_max`
/// old (an as-of time in the future counts as fresh); a pair without one is a problem. The
/// payment leaves out the members of a problem's currency and is refused with the problem only
/// when it cannot do without them.
pub fn pick(
    known: &[Quote],
    from: Currency,
    to: &[Currency],
    now: OffsetDateTime,
    age_max: time::Duration,
) -> Picked {
    let mut picked = Picked::default();
    for to in to.iter().filter(|to| **to != from) {
        match known.iter().find(|q| q.from == from && q.to == *to) {
            None => picked.problems.push(RateProblem::Missing { from, to: *to }),
            Some(quote) if now - quote.as_of > age_max => {
                picked.problems.push(RateProblem::Stale {
                    from,
                    to: *to,
                    as_of: quote.as_of,
                });
            }
            Some(quote) => picked.quotes.push(quote.clone()),
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn c(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    fn quote(from: &str, to: &str, rate: &str, as_of: OffsetDateTime) -> Quote {
        Quote {
            from: c(from),
            to: c(to),
            rate: rate.parse().unwrap(),
            source: "treasury".into(),
            as_of,
        }
    }

    #[test]
    fn pick_keeps_fresh_pairs_and_names_the_others() {
        let now = datetime!(2026-12-07 12:00 UTC);
        let known = [
            quote("USD", "EUR", "0.9238", now - time::Duration::minutes(5)),
            quote("USD", "JPY", "149.37", now - time::Duration::hours(30)),
        ];
        let day = time::Duration::days(1);
        let picked = pick(&known, c("USD"), &[c("USD"), c("EUR")], now, day);
        assert_eq!(picked.quotes, [known[0].clone()]);
        assert!(picked.problems.is_empty());
        let picked = pick(&known, c("USD"), &[c("EUR"), c("JPY"), c("GBP")], now, day);
        assert_eq!(picked.quotes, [known[0].clone()]);
        assert!(matches!(
            picked.problems[..],
            [
                RateProblem::Stale { .. },
                RateProblem::Missing {
                    to: Currency { .. },
                    ..
                }
            ]
        ));
        assert_eq!(
            pick(&known, c("EUR"), &[c("EUR")], now, day),
            Picked::default()
        );
    }
}
