//! Card expiry dates.

use time::Date;

/// How far ahead an expiry year may be. Networks issue cards for at most a few years; 20 leaves
/// room while still catching a mistyped year.
const YEARS_AHEAD_MAX: i32 = 20;

/// A card's expiry month. The card is valid through the last day of that month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Expiry {
    year: i32,
    month: u8,
}

/// Why an expiry is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ExpiryError {
    /// Month outside 1-12.
    #[error("must be 1 to 12")]
    Month,
    /// Year not four digits or too far ahead.
    #[error("must be a four-digit year at most 20 years ahead")]
    Year,
    /// The card expired before `today`.
    #[error("the card has expired")]
    Expired,
}

impl Expiry {
    /// Validates a month and year against `today` (UTC).
    pub fn new(month: i32, year: i32, today: Date) -> Result<Expiry, ExpiryError> {
        let month = u8::try_from(month)
            .ok()
            .filter(|m| (1..=12).contains(m))
            .ok_or(ExpiryError::Month)?;
        if !(1000..=9999).contains(&year) || year > today.year() + YEARS_AHEAD_MAX {
            return Err(ExpiryError::Year);
        }
        let expiry = Expiry { year, month };
        if expiry.has_expired(today) {
            return Err(ExpiryError::Expired);
        }
        Ok(expiry)
    }

    /// Rebuilds an expiry read from storage, where it was validated on the way in.
    pub fn from_stored(month: i16, year: i16) -> Expiry {
        assert!(
            (1..=12).contains(&month),
            "stored expiry month out of range"
        );
        Expiry {
            year: i32::from(year),
            month: month as u8,
        }
    }

    /// True once `today` is past the last day of the expiry month.
    pub fn has_expired(self, today: Date) -> bool {
        (today.year(), u8::from(today.month())) > (self.year, self.month)
    }

    /// The month, 1-12.
    pub fn month(self) -> u8 {
        self.month
    }

    /// The four-digit year.
    pub fn year(self) -> i32 {
        self.year
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    /// Expiries are valid through their whole month and refused outside the rules.
    #[test]
    fn expiry_table() {
        let today = date!(2026 - 11 - 23);
        let cases: &[(i32, i32, Result<(), ExpiryError>)] = &[
            (11, 2026, Ok(())),
            (12, 2026, Ok(())),
            (1, 2027, Ok(())),
            (12, 2046, Ok(())),
            (10, 2026, Err(ExpiryError::Expired)),
            (12, 2025, Err(ExpiryError::Expired)),
            (0, 2030, Err(ExpiryError::Month)),
            (13, 2030, Err(ExpiryError::Month)),
            (-1, 2030, Err(ExpiryError::Month)),
            (1, 2047, Err(ExpiryError::Year)),
            (1, 30, Err(ExpiryError::Year)),
            (1, 99999, Err(ExpiryError::Year)),
        ];
        for &(month, year, expected) in cases {
            assert_eq!(
                Expiry::new(month, year, today).map(|_| ()),
                expected,
                "{month}/{year}"
            );
        }
    }

    /// A card expiring this month is still valid on its last day and expired on the next.
    #[test]
    fn valid_through_end_of_month() {
        let expiry = Expiry::new(2, 2028, date!(2026 - 11 - 23)).unwrap();
        assert!(!expiry.has_expired(date!(2028 - 02 - 29)));
        assert!(expiry.has_expired(date!(2028 - 03 - 01)));
    }
}
