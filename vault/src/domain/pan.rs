//! Card numbers: normalisation, the Luhn check, and the brand by IIN range.
//!
//! [`Pan`] is the only type that holds a card number in clear. It zeroizes its buffer on drop,
//! prints `[redacted]` under `Debug`, and has no `Display`, `Clone` or `Serialize`, so a PAN can
//! be moved to the crypto layer but never copied into a log line by accident.

use std::fmt;

use zeroize::{Zeroize as _, Zeroizing};

/// Fewest digits in a PAN (ISO/IEC 7812 allows 8, but no brand Tandem accepts issues fewer
/// than 12).
const DIGITS_MIN: usize = 12;
/// Most digits in a PAN (ISO/IEC 7812).
const DIGITS_MAX: usize = 19;
/// Longest accepted input including separators: every digit separated by one character.
const INPUT_BYTES_MAX: usize = DIGITS_MAX * 2;

/// A card network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Brand {
    /// Visa.
    Visa,
    /// Mastercard.
    Mastercard,
    /// American Express.
    Amex,
    /// Discover.
    Discover,
    /// JCB.
    Jcb,
    /// UnionPay.
    UnionPay,
    /// Diners Club.
    Diners,
}

impl Brand {
    /// The brand's name in storage and audit rows.
    pub const fn as_str(self) -> &'static str {
        match self {
            Brand::Visa => "visa",
            Brand::Mastercard => "mastercard",
            Brand::Amex => "amex",
            Brand::Discover => "discover",
            Brand::Jcb => "jcb",
            Brand::UnionPay => "unionpay",
            Brand::Diners => "diners",
        }
    }

    /// Parses [`Brand::as_str`].
    pub fn parse(text: &str) -> Option<Brand> {
        [
            Brand::Visa,
            Brand::Mastercard,
            Brand::Amex,
            Brand::Discover,
            Brand::Jcb,
            Brand::UnionPay,
            Brand::Diners,
        ]
        .into_iter()
        .find(|brand| brand.as_str() == text)
    }

    /// The PAN lengths the brand issues.
    fn lengths(self) -> std::ops::RangeInclusive<usize> {
        match self {
            Brand::Visa => 13..=19,
            Brand::Mastercard => 16..=16,
            Brand::Amex => 15..=15,
            Brand::Discover | Brand::Jcb | Brand::UnionPay => 16..=19,
            Brand::Diners => 14..=19,
        }
    }
}

/// Why a card number is refused. The texts name the rule, never the digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PanError {
    /// Empty input.
    #[error("is required")]
    Missing,
    /// A character other than a digit, space or dash.
    #[error("must contain only digits, spaces and dashes")]
    NotDigits,
    /// Fewer than 12 or more than 19 digits.
    #[error("must have 12 to 19 digits")]
    Length,
    /// The Luhn check digit does not match.
    #[error("fails the Luhn check")]
    Luhn,
    /// No supported brand issues this IIN.
    #[error("is not a supported card brand")]
    UnknownBrand,
    /// The brand does not issue PANs of this length.
    #[error("has the wrong length for its card brand")]
    BrandLength,
}

/// A validated card number in clear: digits only, Luhn-valid, of a known brand.
pub struct Pan {
    digits: Zeroizing<String>,
    brand: Brand,
}

impl Pan {
    /// Normalises (strips spaces and dashes) and validates `input`.
    pub fn parse(input: &str) -> Result<Pan, PanError> {
        if input.trim().is_empty() {
            return Err(PanError::Missing);
        }
        if input.len() > INPUT_BYTES_MAX {
            return Err(PanError::Length);
        }
        let mut digits = Zeroizing::new(String::with_capacity(DIGITS_MAX));
        for c in input.chars() {
            match c {
                '0'..='9' => digits.push(c),
                ' ' | '-' => {}
                _ => return Err(PanError::NotDigits),
            }
        }
        if !(DIGITS_MIN..=DIGITS_MAX).contains(&digits.len()) {
            return Err(PanError::Length);
        }
        if !luhn_valid(digits.as_bytes()) {
            return Err(PanError::Luhn);
        }
        let brand = brand_of(digits.as_bytes()).ok_or(PanError::UnknownBrand)?;
        if !brand.lengths().contains(&digits.len()) {
            return Err(PanError::BrandLength);
        }
        Ok(Pan { digits, brand })
    }

    /// The brand by IIN range.
    pub fn brand(&self) -> Brand {
        self.brand
    }

    /// The displayable leading digits: 8 for PANs of 16 or more digits, otherwise 6 (PCI DSS
    /// truncation: at most first 8 and last 4 together).
    pub fn bin(&self) -> String {
        let len = if self.digits.len() >= 16 { 8 } else { 6 };
        self.digits[..len].to_owned()
    }

    /// The last four digits.
    pub fn last4(&self) -> String {
        self.digits[self.digits.len() - 4..].to_owned()
    }

    /// An explicit copy (a `Pan` is deliberately not `Clone`, so copies are visible).
    pub(crate) fn duplicate(&self) -> Pan {
        Pan {
            digits: self.digits.clone(),
            brand: self.brand,
        }
    }

    /// The normalised digits. Only the crypto layer (sealing and fingerprinting) and a
    /// processor connector may call this.
    pub(crate) fn expose_digits(&self) -> &str {
        &self.digits
    }
}

impl fmt::Debug for Pan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pan")
            .field("brand", &self.brand)
            .field("digits", &"[redacted]")
            .finish()
    }
}

/// True if `text` contains something Tandem would accept as a card number: 12-19 digits that
/// parse as a [`Pan`], either contiguous or written in the groups card numbers are printed in
/// (a whole word of groups of 4 or 6 digits joined by single spaces, dashes, dots, colons or
/// slashes, the last group 1-6 digits: `4242 4242 4242 4242`, `3782-822463-10005`,
/// `4111.1111.1111.1111`; request ids allow `. : /`, so those separate groups too). Free-text fields that reach logs,
/// audit rows or storage in clear (reasons, request ids, correlation ids) are refused or
/// replaced when this holds, so a careless caller cannot leak a PAN through them.
///
/// Digit groups in other shapes, or glued to letters, are checked one by one but never joined,
/// so identifiers such as UUIDs (hex groups of 8-4-4-4-12) are never mistaken for a card
/// number, whatever their digits.
pub fn contains_card_number(text: &str) -> bool {
    /// A run of digit groups separated by single spaces or dashes.
    struct Run {
        digits: Zeroizing<Vec<u8>>,
        /// Length of each group, in order.
        groups: Vec<usize>,
        current: usize,
        /// The run's first digit follows the start of the text or a character that is not
        /// a letter or digit.
        starts_at_boundary: bool,
    }

    fn has_pan(digits: &[u8]) -> bool {
        (0..digits.len()).any(|start| {
            (DIGITS_MIN..=DIGITS_MAX)
                .filter(|len| start + len <= digits.len())
                .any(|len| {
                    std::str::from_utf8(&digits[start..start + len])
                        .is_ok_and(|window| Pan::parse(window).is_ok())
                })
        })
    }

    impl Run {
        fn push_digit(&mut self, digit: u8) {
            self.digits.push(digit);
            self.current += 1;
        }

        fn end_group(&mut self) {
            if self.current > 0 {
                self.groups.push(self.current);
                self.current = 0;
            }
        }

        /// Checks the run and empties it; `ends_at_boundary` says whether what follows its
        /// last digit is a separator, the end of the text, or another non-alphanumeric.
        fn finish(&mut self, ends_at_boundary: bool) -> bool {
            self.end_group();
            let card_grouping = self.groups.len() > 1
                && self.starts_at_boundary
                && ends_at_boundary
                && self.groups[..self.groups.len() - 1]
                    .iter()
                    .all(|len| *len == 4 || *len == 6)
                && self.groups.last().is_some_and(|len| (1..=6).contains(len));
            let found = if card_grouping {
                has_pan(&self.digits)
            } else {
                let mut offset = 0;
                self.groups.iter().any(|len| {
                    let group = &self.digits[offset..offset + len];
                    offset += len;
                    has_pan(group)
                })
            };
            self.digits.zeroize();
            self.digits.clear();
            self.groups.clear();
            found
        }
    }

    let mut run = Run {
        digits: Zeroizing::new(Vec::with_capacity(DIGITS_MAX * 2)),
        groups: Vec::new(),
        current: 0,
        starts_at_boundary: true,
    };
    let mut previous: Option<u8> = None;
    let mut previous_was_separator = false;
    for byte in text.bytes() {
        match byte {
            b'0'..=b'9' => {
                if run.digits.is_empty() {
                    run.starts_at_boundary = !previous.is_some_and(|b| b.is_ascii_alphanumeric());
                }
                run.push_digit(byte);
                previous_was_separator = false;
            }
            b' ' | b'-' | b'.' | b':' | b'/' if run.current > 0 && !previous_was_separator => {
                run.end_group();
                previous_was_separator = true;
            }
            _ => {
                let boundary = previous_was_separator || !byte.is_ascii_alphanumeric();
                if !run.digits.is_empty() && run.finish(boundary) {
                    return true;
                }
                previous_was_separator = false;
            }
        }
        previous = Some(byte);
    }
    !run.digits.is_empty() && run.finish(true)
}

/// The Luhn (mod 10) check over ASCII digits.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        debug_assert!(d.is_ascii_digit());
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// The brand whose IIN range contains the PAN's leading digits.
fn brand_of(digits: &[u8]) -> Option<Brand> {
    let prefix = |n: usize| -> u32 {
        digits[..n]
            .iter()
            .fold(0, |acc, d| acc * 10 + u32::from(d - b'0'))
    };
    let (p1, p2, p3, p4) = (prefix(1), prefix(2), prefix(3), prefix(4));
    let brand = match () {
        () if p1 == 4 => Brand::Visa,
        () if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) => Brand::Mastercard,
        () if p2 == 34 || p2 == 37 => Brand::Amex,
        () if p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 => Brand::Discover,
        () if (3528..=3589).contains(&p4) => Brand::Jcb,
        () if p2 == 62 => Brand::UnionPay,
        () if (300..=305).contains(&p3) || p4 == 3095 || p2 == 36 || p2 == 38 || p2 == 39 => {
            Brand::Diners
        }
        () => return None,
    };
    Some(brand)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known test numbers parse to their brand; separators are stripped.
    #[test]
    fn brands_and_normalisation() {
        let cases = [
            ("4242 4242 4242 4242", Brand::Visa, "42424242", "4242"),
            ("4000-0566-5566-5556", Brand::Visa, "40000566", "5556"),
            ("4222222222222", Brand::Visa, "422222", "2222"),
            ("5555 5555 5555 4444", Brand::Mastercard, "55555555", "4444"),
            ("2223 0031 2200 3222", Brand::Mastercard, "22230031", "3222"),
            ("2720 9999 9999 9996", Brand::Mastercard, "27209999", "9996"),
            ("3782 822463 10005", Brand::Amex, "378282", "0005"),
            ("3714 496353 98431", Brand::Amex, "371449", "8431"),
            ("6011 1111 1111 1117", Brand::Discover, "60111111", "1117"),
            ("6445 6445 6445 6445", Brand::Discover, "64456445", "6445"),
            ("3566 0020 2036 0505", Brand::Jcb, "35660020", "0505"),
            ("6200 0000 0000 0005", Brand::UnionPay, "62000000", "0005"),
            ("3056 9300 0902 0004", Brand::Diners, "30569300", "0004"),
            ("3622 720627 1667", Brand::Diners, "362272", "1667"),
        ];
        for (input, brand, bin, last4) in cases {
            let pan = Pan::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(pan.brand(), brand, "{input}");
            assert_eq!(pan.bin(), bin, "{input}");
            assert_eq!(pan.last4(), last4, "{input}");
            assert!(!pan.expose_digits().contains([' ', '-']));
        }
    }

    /// Every rule refuses its own kind of bad input.
    #[test]
    fn refusals() {
        let cases = [
            ("", PanError::Missing),
            ("   ", PanError::Missing),
            ("4242 4242 4242 424x", PanError::NotDigits),
            ("4242.4242.4242.4242", PanError::NotDigits),
            ("42424242424", PanError::Length),
            ("42424242424242424242", PanError::Length),
            ("4242 4242 4242 4241", PanError::Luhn),
            ("9999 9999 9999 9995", PanError::UnknownBrand),
            ("1234 5678 9012 3452", PanError::UnknownBrand),
            // A Luhn-valid 15-digit number in a Mastercard range.
            ("555555555555558", PanError::BrandLength),
            (
                "4242-4242-4242-4242-----------------------",
                PanError::Length,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(Pan::parse(input).err(), Some(expected), "{input:?}");
        }
    }

    /// The Luhn check accepts valid numbers and catches every single-digit change.
    #[test]
    fn luhn_catches_single_digit_errors() {
        let valid = b"4242424242424242";
        assert!(luhn_valid(valid));
        for i in 0..valid.len() {
            for d in b'0'..=b'9' {
                if d == valid[i] {
                    continue;
                }
                let mut changed = *valid;
                changed[i] = d;
                assert!(!luhn_valid(&changed), "position {i} digit {}", d as char);
            }
        }
    }

    /// Card numbers hidden in free text are found; ordinary ids and text are not flagged.
    #[test]
    fn card_numbers_in_free_text() {
        let flagged = [
            "customer said 4242 4242 4242 4242 was stolen",
            "4242-4242-4242-4242",
            "3782-822463-10005",
            "4242.4242.4242.4242",
            "pay/4242/4242/4242/4242",
            "id:4242:4242:4242:4242",
            "ref4242424242424242x",
            "card 378282246310005",
        ];
        for text in flagged {
            assert!(contains_card_number(text), "{text}");
        }
        let clean = [
            "5f0c3a4e-7d1b-4c38-9a52-0e7b0e3c8c11",
            // A UUID whose digits would make a Luhn-valid Visa number if its groups were
            // joined (4-4-4-12 across the dashes).
            "4242aaaa-4242-4242-4242-424242424242",
            "12345678-4000-4000-8000-000000000002",
            "pay_1/leg_2/attempt_1/authorize",
            "reported lost on 2026-11-23",
            "payment/7/leg/2/attempt/1/authorize",
            "v2026.11.24",
            "4242 4242",
            "invoice 12345 for 20.50 USD",
            "order 98765432 of 2026",
        ];
        for text in clean {
            assert!(!contains_card_number(text), "{text}");
        }
    }

    /// Neither Debug nor any error text contains the digits.
    /// UUIDs, the request ids AIP-155 recommends, are never taken for a card number, whatever
    /// digits they happen to hold.
    #[test]
    fn uuids_are_never_card_numbers() {
        for _ in 0..20_000 {
            let id = uuid::Uuid::new_v4().to_string();
            assert!(!contains_card_number(&id), "{id}");
            let digits_only: String = id
                .chars()
                .map(|c| {
                    if c.is_ascii_hexdigit() && !c.is_ascii_digit() {
                        '4'
                    } else {
                        c
                    }
                })
                .collect();
            assert!(!contains_card_number(&digits_only), "{digits_only}");
        }
    }

    #[test]
    fn debug_is_redacted() {
        let pan = Pan::parse("4242424242424242").unwrap();
        let text = format!("{pan:?}");
        assert!(!text.contains("4242"), "{text}");
        let error = Pan::parse("4242424242424241").unwrap_err();
        assert!(!error.to_string().contains("4242"));
    }
}
